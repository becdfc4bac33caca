type FetchOptions = NonNullable<Parameters<typeof $fetch>[1]>

/**
 * Sends a request with ofetch's global $fetch. The global is looked up on every call, so unit
 * tests can replace it with vi.stubGlobal('$fetch', fake).
 */
export function fetchJson<T>(request: string, options: FetchOptions): Promise<T> {
  return (globalThis.$fetch as typeof $fetch)<T>(request, options) as Promise<T>
}
