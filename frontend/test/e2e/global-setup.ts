import { createDatabase, findFreePort, startBackend, startNuxt, writeServerState, type ServerState } from './support/servers'

/**
 * Starts PostgreSQL-backed API (with its worker) and the built Nuxt server on free ports.
 * The process ids go to a state file that globalTeardown reads, also after a failed setup.
 */
export default async function globalSetup(): Promise<void> {
  const state: ServerState = {
    databaseUrl: '',
    apiPort: await findFreePort(),
    uiPort: await findFreePort(),
    backendPid: null,
    nuxtPid: null,
  }
  writeServerState(state)

  state.databaseUrl = createDatabase()
  writeServerState(state)

  state.backendPid = await startBackend(state)
  writeServerState(state)

  state.nuxtPid = await startNuxt(state)
  writeServerState(state)
}
