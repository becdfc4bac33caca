import { test as base, expect, type Page } from '@playwright/test'
import type { Task, TaskListResponse, TaskLog, TaskStatus } from '../../../app/types/tasks'
import { publicApiBase, readServerState, sleep, uiBase, type ServerState } from './servers'

/** Calls the backend directly, as an API client would. */
export class ApiClient {
  constructor(readonly baseUrl: string) {}

  async createTask(body: { name: string, type?: string, execution_time: number, failure_rate?: number }): Promise<Task> {
    const response = await fetch(`${this.baseUrl}/tasks/`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'processing', failure_rate: 0, ...body }),
    })
    expect(response.status, await response.clone().text()).toBe(201)
    return await response.json() as Task
  }

  async getTask(taskId: number): Promise<Task> {
    const response = await fetch(`${this.baseUrl}/tasks/${taskId}`)
    expect(response.status).toBe(200)
    return await response.json() as Task
  }

  async getLogs(taskId: number): Promise<TaskLog[]> {
    const response = await fetch(`${this.baseUrl}/tasks/${taskId}/logs`)
    expect(response.status).toBe(200)
    return await response.json() as TaskLog[]
  }

  async listTasks(query: Record<string, string> = {}): Promise<TaskListResponse> {
    const response = await fetch(`${this.baseUrl}/tasks/?${new URLSearchParams(query)}`)
    expect(response.status).toBe(200)
    return await response.json() as TaskListResponse
  }

  /** Waits until the task has the status, checking every 200 ms for at most timeoutMs. */
  async waitForStatus(taskId: number, status: TaskStatus, timeoutMs = 30_000): Promise<Task> {
    const deadline = Date.now() + timeoutMs
    let task = await this.getTask(taskId)
    while (task.status !== status && Date.now() < deadline) {
      await sleep(200)
      task = await this.getTask(taskId)
    }
    expect(task.status, `task ${taskId} status after ${timeoutMs} ms`).toBe(status)
    return task
  }
}

/**
 * Records the title of every toast the page shows, including toasts already gone, in
 * window.__toastTitles. Nuxt UI renders each toast as an <li> in the "Notifications" region.
 */
async function recordToasts(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const titles: string[] = []
    Object.assign(window, { __toastTitles: titles })
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (!(node instanceof HTMLElement)) {
            continue
          }
          const items = node.matches('li') ? [node] : [...node.querySelectorAll('li')]
          for (const item of items) {
            const title = item.querySelector('[data-slot="title"]')
            if (title && item.closest('[role="region"]')) {
              titles.push(title.textContent?.trim() ?? '')
            }
          }
        }
      }
    }).observe(document, { childList: true, subtree: true })
  })
}

export function readToastTitles(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { __toastTitles: string[] }).__toastTitles)
}

export function countToasts(titles: string[], title: string): number {
  return titles.filter(shown => shown === title).length
}

/**
 * Waits until the page has shown the toast `count` times, then checks that later polls
 * (one more second and a half) add none.
 */
export async function expectToastCount(page: Page, title: string, count: number): Promise<void> {
  await expect.poll(async () => countToasts(await readToastTitles(page), title), { message: `toasts titled "${title}"` }).toBe(count)
  await sleep(1500)
  expect(countToasts(await readToastTitles(page), title), `toasts titled "${title}" after more polls`).toBe(count)
}

/** Returns a task name that no other test uses. */
export function uniqueName(label: string): string {
  return `${label} ${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`
}

export const test = base.extend<{ servers: ServerState, api: ApiClient, consoleMessages: string[] }>({
  servers: async ({}, use) => {
    await use(readServerState())
  },
  baseURL: async ({}, use) => {
    await use(uiBase(readServerState()))
  },
  api: async ({ servers }, use) => {
    await use(new ApiClient(publicApiBase(servers)))
  },
  consoleMessages: async ({ page }, use) => {
    const messages: string[] = []
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') {
        messages.push(`${message.type()}: ${message.text()}`)
      }
    })
    page.on('pageerror', error => messages.push(`pageerror: ${error.message}`))
    await use(messages)
  },
  page: async ({ page }, use) => {
    await recordToasts(page)
    // Every navigation waits for hydration (see app/plugins/hydration-marker.client.ts), so
    // no test types into a form that hydration then resets.
    const goto = page.goto.bind(page)
    page.goto = async (url, options) => {
      const response = await goto(url, options)
      await page.locator('html[data-hydrated="true"]').waitFor({ state: 'attached', timeout: 15_000 })
      return response
    }
    await use(page)
  },
})

export { expect }
