import { defineVitestConfig } from '@nuxt/test-utils/config'

export default defineVitestConfig({
  test: {
    include: ['test/unit/**/*.spec.ts'],
    // Setting up the Nuxt environment alone takes 6 to 10 s on a loaded 2-core machine.
    hookTimeout: 60_000,
    testTimeout: 30_000,
    environment: 'nuxt',
    environmentOptions: {
      nuxt: { domEnvironment: 'happy-dom' },
    },
  },
})
