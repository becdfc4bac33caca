import { vi } from 'vitest'

export interface FakeRequest {
  path: string
  options: {
    baseURL?: string
    method?: string
    query?: Record<string, unknown>
    headers?: Record<string, string>
    body?: unknown
    signal?: AbortSignal
  }
  resolve: (value: unknown) => void
  reject: (error: unknown) => void
  isAborted: boolean
}

/**
 * A stand-in for ofetch's $fetch: every call stays pending until the test resolves or
 * rejects it, and an aborted signal rejects it the way ofetch does.
 */
export function createFakeFetch() {
  const requests: FakeRequest[] = []

  const fetchMock = vi.fn((path: string, options: FakeRequest['options'] = {}) => new Promise((resolve, reject) => {
    const request: FakeRequest = { path, options, resolve, reject, isAborted: false }
    options.signal?.addEventListener('abort', () => {
      request.isAborted = true
      reject(Object.assign(new Error(`[GET] "${path}": aborted`), { name: 'FetchError', cause: new DOMException('aborted', 'AbortError') }))
    })
    requests.push(request)
  }))

  return { fetchMock, requests }
}

/** An ofetch error with no response, as thrown when the server cannot be reached. */
export function createNetworkError(): Error {
  return Object.assign(new Error('[GET] "http://localhost:8000/tasks/": <no response> fetch failed'), { name: 'FetchError' })
}

/** An ofetch error for an HTTP error status with a JSON body. */
export function createHttpError(status: number, data: unknown): Error {
  return Object.assign(new Error(`request failed with ${status}`), { name: 'FetchError', response: { status }, data, status })
}
