import type { FieldError } from '~/types/tasks'

/** Description of a failed request for the UI. */
export interface ApiProblem {
  /** `unreachable` means no response or a 502/503/504 status. `aborted` means the client cancelled the request. */
  kind: 'unreachable' | 'aborted' | 'http'
  status: number | null
  message: string
  /** Messages for single fields, keyed by the API's field name (from FastAPI's 422 `loc`). */
  fieldErrors: FieldError[]
}

interface ValidationIssue {
  loc?: unknown[]
  msg?: string
}

const UNREACHABLE_STATUSES = new Set([502, 503, 504])

export const UNREACHABLE_MESSAGE = 'Cannot reach the task API. Check that the backend is running; this page retries automatically.'

/**
 * Turns an error thrown by $fetch (ofetch) into a message for people. The message never
 * contains the request URL, because on the SSR server that URL is the internal API base.
 */
export function describeApiError(error: unknown): ApiProblem {
  if (isAbortError(error)) {
    return { kind: 'aborted', status: null, message: 'The request was cancelled.', fieldErrors: [] }
  }

  const response = (error as { response?: { status?: number } } | null)?.response
  const status = typeof response?.status === 'number' ? response.status : null
  const data = (error as { data?: unknown } | null)?.data
  const detail = (data as { detail?: unknown } | null)?.detail

  if (status === null) {
    return { kind: 'unreachable', status: null, message: UNREACHABLE_MESSAGE, fieldErrors: [] }
  }

  if (Array.isArray(detail)) {
    const fieldErrors = mapValidationIssues(detail as ValidationIssue[])
    const message = fieldErrors.map(fieldError => fieldError.message).join(' ') || `The request was rejected with status ${status}.`
    return { kind: 'http', status, message, fieldErrors }
  }

  const message = typeof detail === 'string' && detail.trim()
    ? detail
    : `The task API returned status ${status}.`
  const kind = UNREACHABLE_STATUSES.has(status) ? 'unreachable' : 'http'
  return { kind, status, message, fieldErrors: [] }
}

/** Maps FastAPI's 422 items to field errors: `loc` ends with the field name. */
export function mapValidationIssues(issues: ValidationIssue[]): FieldError[] {
  return issues.map((issue) => {
    const location = Array.isArray(issue.loc) ? issue.loc : []
    const lastPart = location.at(-1)
    const name = typeof lastPart === 'string' && lastPart !== 'body' ? lastPart : ''
    const message = stripPydanticPrefix(String(issue.msg ?? 'Invalid value.'))
    return { name, message }
  })
}

function stripPydanticPrefix(message: string): string {
  return message.replace(/^(Value error|Assertion failed), /, '')
}

function isAbortError(error: unknown): boolean {
  const name = (error as { name?: string; cause?: { name?: string } } | null)
  return name?.name === 'AbortError' || name?.cause?.name === 'AbortError'
}
