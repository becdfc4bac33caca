export default defineEventHandler((event) => {
  const taskId = readTaskIdParam(event)
  if (taskId === null) {
    return taskIdNotFoundBody(event)
  }
  return forwardToBackend(event, { method: 'POST', path: `/tasks/${taskId}/cancel` })
})
