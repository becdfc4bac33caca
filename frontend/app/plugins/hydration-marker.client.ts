// Marks <html data-hydrated="true"> once the first render has hydrated. Input typed before
// that moment is reset by hydration, so browser tests wait for the marker before typing.
export default defineNuxtPlugin((nuxtApp) => {
  nuxtApp.hook('app:suspense:resolve', () => {
    document.documentElement.dataset.hydrated = 'true'
  })
})
