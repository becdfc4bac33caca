/**
 * Returns whether browser-only rendering (local time zone, the current time) is safe.
 *
 * False during SSR and during hydration, so the first client render matches the server
 * HTML. After client-side navigation it is true from the start, so nothing flickers.
 */
export function useIsMounted() {
  const nuxtApp = useNuxtApp()
  const isMounted = ref(import.meta.client && !nuxtApp.isHydrating)

  onMounted(() => {
    isMounted.value = true
  })

  return isMounted
}
