import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, openSync } from 'node:fs'
import { resolve } from 'node:path'
import type { Page } from '@playwright/test'
import { expect, test, uniqueName } from './support/fixtures'
import {
  BACKEND_DIR,
  E2E_POLL_INTERVAL_MS,
  FRONTEND_DIR,
  LOG_DIR,
  dropDatabase,
  findFreePort,
  stopProcess,
  waitForHttpOk,
} from './support/servers'

// This file runs its own backend with API_TOKEN set and its own Nuxt server with NUXT_API_TOKEN,
// so the servers of globalSetup (no token) and the other spec files stay as they are.

const TOKEN = `e2e-token-${randomBytes(24).toString('hex')}`
const SERVER_STARTUP_TIMEOUT_MS = 120_000

const BACKEND_PYTHON = resolve(BACKEND_DIR, '.venv/bin/python')
const BACKEND_UVICORN = resolve(BACKEND_DIR, '.venv/bin/uvicorn')
const BACKEND_ALEMBIC = resolve(BACKEND_DIR, '.venv/bin/alembic')
const NODE_22 = resolve(FRONTEND_DIR, 'node_modules/.bin/node')
const NUXT_SERVER_ENTRY = resolve(FRONTEND_DIR, '.output/server/index.mjs')

let databaseUrl = ''
let apiPort = 0
let uiPort = 0
let backendPid: number | null = null
let nuxtPid: number | null = null

const apiBase = () => `http://127.0.0.1:${apiPort}`
const uiBase = () => `http://127.0.0.1:${uiPort}`

// The tests share one pair of servers and one database, so they run in order.
test.describe.configure({ mode: 'serial' })

test.beforeAll(async () => {
  test.setTimeout(SERVER_STARTUP_TIMEOUT_MS)
  apiPort = await findFreePort()
  uiPort = await findFreePort()
  mkdirSync(LOG_DIR, { recursive: true })

  databaseUrl = execFileSync(BACKEND_PYTHON, ['scripts/database.py', 'create', '--prefix', 'e2etoken'], {
    cwd: BACKEND_DIR,
    encoding: 'utf8',
  }).trim().split('\n').at(-1)!.trim()
  execFileSync(BACKEND_ALEMBIC, ['upgrade', 'head'], {
    cwd: BACKEND_DIR,
    env: { ...process.env, DATABASE_URL: databaseUrl },
    stdio: ['ignore', 'ignore', 'inherit'],
  })

  const backendLog = openSync(resolve(LOG_DIR, 'api-token-backend.log'), 'a')
  const backend = spawn(BACKEND_UVICORN, ['app.main:app', '--host', '127.0.0.1', '--port', String(apiPort)], {
    cwd: BACKEND_DIR,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      CORS_ORIGINS: JSON.stringify([uiBase()]),
      API_TOKEN: TOKEN,
    },
    stdio: ['ignore', backendLog, backendLog],
  })
  backendPid = backend.pid ?? null
  await waitForHttpOk(`${apiBase()}/health`, backend.pid!, 'api-token-backend')

  const nuxtLog = openSync(resolve(LOG_DIR, 'api-token-nuxt.log'), 'a')
  const nuxt = spawn(NODE_22, [NUXT_SERVER_ENTRY], {
    cwd: FRONTEND_DIR,
    env: {
      ...process.env,
      HOST: '127.0.0.1',
      PORT: String(uiPort),
      NUXT_PUBLIC_API_BASE: apiBase(),
      NUXT_API_BASE_SERVER: `http://localhost:${apiPort}`,
      NUXT_PUBLIC_POLL_INTERVAL_MS: String(E2E_POLL_INTERVAL_MS),
      NUXT_API_TOKEN: TOKEN,
    },
    stdio: ['ignore', nuxtLog, nuxtLog],
  })
  nuxtPid = nuxt.pid ?? null
  await waitForHttpOk(`${uiBase()}/`, nuxt.pid!, 'api-token-nuxt')
})

test.afterAll(async () => {
  test.setTimeout(SERVER_STARTUP_TIMEOUT_MS)
  await stopProcess(nuxtPid)
  await stopProcess(backendPid)
  if (databaseUrl) {
    dropDatabase(databaseUrl)
  }
})

/**
 * Records every request the browser sends (method, URL, all headers, body) and every response
 * it receives (URL, headers, body). Call `read()` after the page is done to get them as text.
 */
function recordBrowserTraffic(page: Page): { read: () => Promise<string[]> } {
  const entries: Promise<string>[] = []
  page.on('request', (request) => {
    entries.push(request.allHeaders().then(headers =>
      `request ${request.method()} ${request.url()}\n${JSON.stringify(headers)}\n${request.postData() ?? ''}`,
    ))
  })
  page.on('response', (response) => {
    entries.push(Promise.all([
      response.allHeaders(),
      // Redirects and aborted responses have no body.
      response.text().catch(() => ''),
    ]).then(([headers, body]) => `response ${response.status()} ${response.url()}\n${JSON.stringify(headers)}\n${body}`))
  })
  return { read: () => Promise.all(entries) }
}

/**
 * Returns, for each text that contains the token, its first line (the request or response line
 * for recorded traffic) and the 100 characters before the first match.
 */
function findTokenLeaks(texts: string[]): string[] {
  return texts
    .filter(text => text.includes(TOKEN))
    .map((text) => {
      const index = text.indexOf(TOKEN)
      return `${text.split('\n', 1)[0]!.slice(0, 200)} ... ${text.slice(Math.max(0, index - 100), index)}[token]`
    })
}

function taskRow(page: Page, name: string) {
  return page.getByRole('row').filter({ has: page.getByRole('link', { name, exact: true }) })
}

async function createTaskWithoutToken(): Promise<Response> {
  return await fetch(`${apiBase()}/tasks/`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: uniqueName('no token'), type: 'processing', execution_time: 0 }),
  })
}

async function getTaskStatus(taskId: number): Promise<string> {
  const response = await fetch(`${apiBase()}/tasks/${taskId}`)
  expect(response.status).toBe(200)
  return ((await response.json()) as { status: string }).status
}

test('dashboard creates and cancels with the token', async ({ page }) => {
  const traffic = recordBrowserTraffic(page)
  const name = uniqueName('token job')
  await page.goto(`${uiBase()}/`)

  await page.getByRole('textbox', { name: /^Name\*?$/ }).fill(name)
  await page.getByLabel('Execution time (s)').fill('60')
  await page.getByLabel('Failure chance (%)').fill('0')
  await page.getByRole('button', { name: 'Create task' }).click()

  await expect(taskRow(page, name)).toBeVisible()
  await taskRow(page, name).getByRole('link', { name }).click()
  await expect(page).toHaveURL(/\/tasks\/\d+$/)
  const taskId = Number(new URL(page.url()).pathname.split('/').at(-1))

  await page.getByRole('button', { name: 'Cancel' }).click()

  await expect(page.locator('[data-status]').first()).toHaveText('Cancelled')
  expect(await getTaskStatus(taskId)).toBe('cancelled')

  const entries = await traffic.read()
  expect(entries.some(entry => entry.startsWith(`request POST ${uiBase()}/api/tasks`)), 'the browser sent the create request to the Nuxt server').toBe(true)
  expect(entries.some(entry => entry.startsWith(`request POST ${uiBase()}/api/tasks/${taskId}/cancel`)), 'the browser sent the cancel request to the Nuxt server').toBe(true)
  expect(findTokenLeaks(entries)).toEqual([])
})

test('backend rejects mutations without the token', async () => {
  const listBefore = await (await fetch(`${apiBase()}/tasks/`)).json() as { total: number }

  const withoutToken = await createTaskWithoutToken()
  const wrongToken = await fetch(`${apiBase()}/tasks/`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'authorization': 'Bearer not-the-token' },
    body: JSON.stringify({ name: uniqueName('wrong token'), type: 'processing', execution_time: 0 }),
  })

  expect(withoutToken.status).toBe(401)
  expect(withoutToken.headers.get('www-authenticate')).toBe('Bearer')
  expect(wrongToken.status).toBe(401)
  const listAfter = await (await fetch(`${apiBase()}/tasks/`)).json() as { total: number }
  expect(listAfter.total).toBe(listBefore.total)
})

test('browser never receives the token', async ({ page }) => {
  const created = await fetch(`${apiBase()}/tasks/`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'authorization': `Bearer ${TOKEN}` },
    body: JSON.stringify({ name: uniqueName('token detail'), type: 'notification', execution_time: 0 }),
  })
  expect(created.status).toBe(201)
  const taskId = ((await created.json()) as { id: number }).id
  const traffic = recordBrowserTraffic(page)

  const serverHtml: string[] = []
  for (const path of ['/', `/tasks/${taskId}`]) {
    const response = await fetch(`${uiBase()}${path}`)
    expect(response.status, `GET ${path}`).toBe(200)
    serverHtml.push(await response.text())
  }
  const browserTexts: string[] = []
  for (const path of ['/', `/tasks/${taskId}`]) {
    await page.goto(`${uiBase()}${path}`)
    // Nuxt deletes window.__NUXT__ after reading it, so the hydrated payload and runtime config
    // are read from the Nuxt app that Vue attaches to the #__nuxt element.
    const payload = await page.evaluate(() => {
      const root = document.getElementById('__nuxt') as (HTMLElement & { __vue_app__?: { $nuxt?: { payload: unknown, $config: unknown } } }) | null
      const nuxtApp = root?.__vue_app__?.$nuxt
      return {
        nuxtData: document.getElementById('__NUXT_DATA__')?.textContent ?? '',
        hydratedPayload: JSON.stringify(nuxtApp?.payload ?? null),
        runtimeConfig: JSON.stringify(nuxtApp?.$config ?? null),
      }
    })
    expect(payload.nuxtData, `__NUXT_DATA__ payload on ${path}`).not.toBe('')
    expect(payload.hydratedPayload, `hydrated Nuxt payload on ${path}`).not.toBe('null')
    expect(payload.runtimeConfig, `runtime config in the browser on ${path}`).toContain(apiBase())
    expect(payload.runtimeConfig, `runtime config in the browser on ${path}`).not.toContain('apiToken')
    browserTexts.push(payload.nuxtData, payload.hydratedPayload, payload.runtimeConfig, await page.content())
  }

  expect(findTokenLeaks(serverHtml)).toEqual([])
  for (const html of serverHtml) {
    expect(html).not.toContain('apiToken')
  }
  expect(findTokenLeaks(browserTexts)).toEqual([])
  expect(findTokenLeaks(await traffic.read())).toEqual([])
})
