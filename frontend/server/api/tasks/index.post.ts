// Creates a task: the browser's body and Idempotency-Key header go to POST /tasks/ unchanged.
export default defineEventHandler(event =>
  forwardToBackend(event, { method: 'POST', path: '/tasks/', forwardHeaders: ['idempotency-key'] }),
)
