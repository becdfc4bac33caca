// Runtime values come from the environment when the built server starts:
// NUXT_PUBLIC_API_BASE, NUXT_PUBLIC_POLL_INTERVAL_MS, NUXT_API_BASE_SERVER, NUXT_API_TOKEN.
export default defineNuxtConfig({
  modules: ['@nuxt/ui', '@pinia/nuxt'],

  css: ['~/assets/css/main.css'],

  runtimeConfig: {
    // Base URL the SSR server and the server routes use to reach the backend, for example
    // http://backend:8000 inside Docker Compose. Empty means "same as public.apiBase".
    apiBaseServer: '',
    // Bearer token added to mutating requests forwarded by server/api/tasks. Never sent to the browser.
    apiToken: '',
    public: {
      // Base URL the browser uses for reads and polling.
      apiBase: 'http://localhost:8000',
      pollIntervalMs: 2000,
    },
  },

  app: {
    head: {
      htmlAttrs: { lang: 'en' },
      title: 'Task runner',
      meta: [{ name: 'viewport', content: 'width=device-width, initial-scale=1' }],
    },
  },

  // The build and the server must work without network access beyond the npm registry.
  ui: {
    fonts: false,
    colorMode: false,
  },
  icon: {
    serverBundle: { collections: ['lucide'] },
    clientBundle: { scan: true },
    fallbackToApi: false,
  },
  telemetry: false,
  devtools: { enabled: false },

  compatibilityDate: '2026-12-01',
})
