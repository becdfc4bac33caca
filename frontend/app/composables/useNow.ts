/**
 * Returns the current time in milliseconds, refreshed every `intervalMs` while the component
 * is mounted, or null before mount so SSR and hydration render the same markup.
 */
export function useNow(intervalMs = 500) {
  const now = ref<number | null>(null)
  let timer: ReturnType<typeof setInterval> | null = null

  onMounted(() => {
    now.value = Date.now()
    timer = setInterval(() => {
      now.value = Date.now()
    }, intervalMs)
  })

  onBeforeUnmount(() => {
    if (timer) {
      clearInterval(timer)
      timer = null
    }
  })

  return now
}
