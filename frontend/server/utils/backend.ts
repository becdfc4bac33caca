import type { H3Event } from 'h3'

/** How long a forwarded mutation may wait for the backend before the browser gets a 504. */
const BACKEND_TIMEOUT_MS = 15_000

/** Response headers of the backend that the browser needs (Retry-After for 429s). */
const FORWARDED_RESPONSE_HEADERS = ['retry-after', 'location']

interface ForwardOptions {
  method: 'POST' | 'DELETE'
  /** Path on the backend, starting with a slash. */
  path: string
  /** Request headers to copy from the browser's request when present. */
  forwardHeaders?: string[]
}

/**
 * Sends the browser's request to the backend with the server-only base URL and the API token,
 * then returns the backend's status code and JSON body unchanged.
 */
export async function forwardToBackend(event: H3Event, options: ForwardOptions): Promise<unknown> {
  const config = useRuntimeConfig(event)
  const baseUrl = String(config.apiBaseServer || config.public.apiBase)
  const headers: Record<string, string> = { accept: 'application/json' }

  for (const name of options.forwardHeaders ?? []) {
    const value = getRequestHeader(event, name)
    if (value !== undefined) {
      headers[name] = value
    }
  }
  if (config.apiToken) {
    headers.authorization = `Bearer ${config.apiToken}`
  }

  let body: string | undefined
  if (options.method === 'POST') {
    body = (await readRawBody(event, 'utf8')) ?? undefined
    if (body !== undefined) {
      headers['content-type'] = 'application/json'
    }
  }

  let response: Response
  try {
    response = await fetch(`${baseUrl.replace(/\/+$/, '')}${options.path}`, {
      method: options.method,
      headers,
      body,
      signal: AbortSignal.timeout(BACKEND_TIMEOUT_MS),
    })
  }
  catch (error) {
    // The browser gets no internal host name: it is logged here instead.
    console.error(`[api proxy] ${options.method} ${options.path} to ${baseUrl} failed:`, error)
    const isTimeout = error instanceof DOMException && error.name === 'TimeoutError'
    setResponseStatus(event, isTimeout ? 504 : 502)
    return {
      detail: isTimeout
        ? `The task API timed out after ${BACKEND_TIMEOUT_MS / 1000} s. Try again later.`
        : 'Cannot reach the task API. Check that the backend is running and try again.',
    }
  }

  setResponseStatus(event, response.status, response.statusText)
  for (const name of FORWARDED_RESPONSE_HEADERS) {
    const value = response.headers.get(name)
    if (value !== null) {
      setResponseHeader(event, name, value)
    }
  }

  const text = await response.text()
  if (!text) {
    return null
  }
  setResponseHeader(event, 'content-type', response.headers.get('content-type') ?? 'application/json')
  return text
}

/**
 * Reads the numeric `id` route parameter. For anything else it sets a 404 status and
 * returns null, and the route responds with `taskIdNotFoundBody`.
 */
export function readTaskIdParam(event: H3Event): number | null {
  const rawId = getRouterParam(event, 'id') ?? ''
  if (!/^\d{1,18}$/.test(rawId)) {
    setResponseStatus(event, 404)
    return null
  }
  return Number(rawId)
}

export function taskIdNotFoundBody(event: H3Event): { detail: string } {
  return { detail: `Task ${getRouterParam(event, 'id') ?? ''} not found: task ids are positive integers.` }
}
