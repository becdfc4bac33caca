import { dropDatabase, readServerState, stopProcess } from './support/servers'

export default async function globalTeardown(): Promise<void> {
  const state = readServerState()

  await stopProcess(state.nuxtPid)
  await stopProcess(state.backendPid)
  if (state.databaseUrl) {
    dropDatabase(state.databaseUrl)
  }
}
