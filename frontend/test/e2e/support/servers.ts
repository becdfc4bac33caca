import { spawn, execFileSync } from 'node:child_process'
import { mkdirSync, openSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const FRONTEND_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
export const REPO_DIR = resolve(FRONTEND_DIR, '..')
export const BACKEND_DIR = resolve(REPO_DIR, 'backend')
export const RESULTS_DIR = resolve(FRONTEND_DIR, 'test-results')
export const LOG_DIR = resolve(RESULTS_DIR, 'e2e-logs')
const STATE_FILE = resolve(RESULTS_DIR, 'e2e-servers.json')

const BACKEND_PYTHON = resolve(BACKEND_DIR, '.venv/bin/python')
const BACKEND_UVICORN = resolve(BACKEND_DIR, '.venv/bin/uvicorn')
const BACKEND_ALEMBIC = resolve(BACKEND_DIR, '.venv/bin/alembic')
// npm's node@22 package: nuxt 4.6 needs Node 22, while the machine may have an older one.
const NODE_22 = resolve(FRONTEND_DIR, 'node_modules/.bin/node')
const NUXT_SERVER_ENTRY = resolve(FRONTEND_DIR, '.output/server/index.mjs')

const STARTUP_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 15_000
/** Polling interval of the Nuxt app under test, shorter than the default 2 s to keep tests fast. */
export const E2E_POLL_INTERVAL_MS = 1000

/** Processes and addresses shared by globalSetup, the tests and globalTeardown. */
export interface ServerState {
  databaseUrl: string
  apiPort: number
  uiPort: number
  backendPid: number | null
  nuxtPid: number | null
}

export function readServerState(): ServerState {
  return JSON.parse(readFileSync(STATE_FILE, 'utf8')) as ServerState
}

export function writeServerState(state: ServerState): void {
  mkdirSync(RESULTS_DIR, { recursive: true })
  writeFileSync(STATE_FILE, JSON.stringify(state, null, 2))
}

/** Public API base: what the browser calls. */
export function publicApiBase(state: ServerState): string {
  return `http://127.0.0.1:${state.apiPort}`
}

/**
 * Server-only API base: the same backend under another host name, so a test can check that
 * this spelling never reaches the browser.
 */
export function serverApiBase(state: ServerState): string {
  return `http://localhost:${state.apiPort}`
}

export function uiBase(state: ServerState): string {
  return `http://127.0.0.1:${state.uiPort}`
}

export function findFreePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => {
        if (address && typeof address === 'object') {
          resolvePort(address.port)
        }
        else {
          reject(new Error('could not read the port of a probe socket'))
        }
      })
    })
  })
}

/** Creates an empty, migrated database on the backend's test PostgreSQL server and returns its URL. */
export function createDatabase(): string {
  requireFile(BACKEND_PYTHON, 'the backend virtualenv is missing: create it first (make backend-install)')
  const databaseUrl = execFileSync(BACKEND_PYTHON, ['scripts/database.py', 'create', '--prefix', 'e2e'], {
    cwd: BACKEND_DIR,
    encoding: 'utf8',
  }).trim().split('\n').at(-1)!.trim()
  execFileSync(BACKEND_ALEMBIC, ['upgrade', 'head'], {
    cwd: BACKEND_DIR,
    env: { ...process.env, DATABASE_URL: databaseUrl },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  return databaseUrl
}

export function dropDatabase(databaseUrl: string): void {
  execFileSync(BACKEND_PYTHON, ['scripts/database.py', 'drop', databaseUrl], { cwd: BACKEND_DIR, stdio: 'inherit' })
}

/** Starts the API with its built-in worker and waits until /health returns 200. */
export async function startBackend(state: ServerState): Promise<number> {
  mkdirSync(LOG_DIR, { recursive: true })
  const log = openSync(resolve(LOG_DIR, 'backend.log'), 'a')
  const child = spawn(BACKEND_UVICORN, ['app.main:app', '--host', '127.0.0.1', '--port', String(state.apiPort)], {
    cwd: BACKEND_DIR,
    env: {
      ...process.env,
      DATABASE_URL: state.databaseUrl,
      CORS_ORIGINS: JSON.stringify([uiBase(state), `http://localhost:${state.uiPort}`]),
      RETRY_BACKOFF_BASE_SECONDS: '0.2',
      RETRY_BACKOFF_MAX_SECONDS: '0.5',
      API_TOKEN: '',
    },
    stdio: ['ignore', log, log],
  })
  await waitForHttpOk(`${publicApiBase(state)}/health`, child.pid!, 'backend')
  return child.pid!
}

/** Starts the built Nuxt server with Node 22 and waits until it serves the dashboard. */
export async function startNuxt(state: ServerState): Promise<number> {
  requireFile(NUXT_SERVER_ENTRY, 'the Nuxt build is missing: run `npm run build` before `npm run test:e2e`')
  mkdirSync(LOG_DIR, { recursive: true })
  const log = openSync(resolve(LOG_DIR, 'nuxt.log'), 'a')
  const child = spawn(NODE_22, [NUXT_SERVER_ENTRY], {
    cwd: FRONTEND_DIR,
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: String(state.uiPort),
      NUXT_PUBLIC_API_BASE: publicApiBase(state),
      NUXT_API_BASE_SERVER: serverApiBase(state),
      NUXT_PUBLIC_POLL_INTERVAL_MS: String(E2E_POLL_INTERVAL_MS),
    },
    stdio: ['ignore', log, log],
  })
  await waitForHttpOk(`${uiBase(state)}/`, child.pid!, 'nuxt')
  return child.pid!
}

/** Sends SIGTERM to a process this harness started and waits for it to exit, then SIGKILL. */
export async function stopProcess(pid: number | null): Promise<void> {
  if (pid === null || !isRunning(pid)) {
    return
  }
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + STOP_TIMEOUT_MS
  while (isRunning(pid) && Date.now() < deadline) {
    await sleep(100)
  }
  if (isRunning(pid)) {
    process.kill(pid, 'SIGKILL')
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  }
  catch {
    return false
  }
}

/**
 * Waits until `url` returns a 2xx status, failing early if the process exits. `name` is the
 * log file name under LOG_DIR, without `.log`, that the error message points to.
 */
export async function waitForHttpOk(url: string, pid: number, name: string): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (!isRunning(pid)) {
      throw new Error(`${name} (pid ${pid}) exited during startup; see ${resolve(LOG_DIR, `${name}.log`)}`)
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) })
      if (response.ok) {
        return
      }
    }
    catch {
      // Not listening yet.
    }
    await sleep(250)
  }
  throw new Error(`${name} did not return 200 on ${url} within ${STARTUP_TIMEOUT_MS / 1000} s; see ${resolve(LOG_DIR, `${name}.log`)}`)
}

function requireFile(path: string, message: string): void {
  if (!existsSync(path)) {
    throw new Error(`${path} not found: ${message}`)
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise(resolveSleep => setTimeout(resolveSleep, ms))
}
