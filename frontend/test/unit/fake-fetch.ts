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
 * Creates a stand-in for ofetch's $fetch. Every call stays pending until the test resolves or
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

/** Builds the ofetch error thrown when the server cannot be reached: it has no response. */
export function createNetworkError(): Error {
  return Object.assign(new Error('[GET] "http://localhost:8000/tasks/": <no response> fetch failed'), { name: 'FetchError' })
}

/** Builds the ofetch error thrown for an HTTP error status with a JSON body. */
export function createHttpError(status: number, data: unknown): Error {
  return Object.assign(new Error(`request failed with ${status}`), { name: 'FetchError', response: { status }, data, status })
}
