import type { Page } from '@playwright/test'
import { expect, expectToastCount, test, uniqueName } from './support/fixtures'
import { sleep } from './support/servers'

async function fillCreateForm(page: Page, values: { name: string, executionTime: string, failurePercent: string }): Promise<void> {
  await nameInput(page).fill(values.name)
  await page.getByLabel('Execution time (s)').fill(values.executionTime)
  await page.getByLabel('Failure chance (%)').fill(values.failurePercent)
}

function nameInput(page: Page) {
  // The label reads "Name*" because the field is required.
  return page.getByRole('textbox', { name: /^Name\*?$/ })
}

function taskRow(page: Page, name: string) {
  return page.getByRole('row').filter({ has: page.getByRole('link', { name, exact: true }) })
}

function statusCell(page: Page, name: string) {
  return taskRow(page, name).locator('[data-status]')
}

test('created task runs to completion without a reload', async ({ page, api, consoleMessages }) => {
  const name = uniqueName('report')
  await page.goto('/')
  await page.evaluate(() => Object.assign(window, { __sameDocument: true }))

  await fillCreateForm(page, { name, executionTime: '3', failurePercent: '0' })
  await page.getByRole('button', { name: 'Create task' }).click()

  await expect(taskRow(page, name)).toBeVisible({ timeout: 3000 })
  await expect(statusCell(page, name)).toHaveText(/Pending|Running/, { timeout: 3000 })
  await expect(statusCell(page, name)).toHaveText('Running', { timeout: 10_000 })
  await expect(taskRow(page, name).getByRole('progressbar')).toBeVisible()
  await expect(statusCell(page, name)).toHaveText('Completed', { timeout: 15_000 })
  expect(await page.evaluate(() => (window as unknown as { __sameDocument?: boolean }).__sameDocument)).toBe(true)
  await expect(taskRow(page, name).getByTestId('task-runs')).toHaveText('1 / 3')
  await expectToastCount(page, 'Task created', 1)
  await expectToastCount(page, 'Task completed', 1)

  await page.reload()
  await expect(statusCell(page, name)).toHaveText('Completed')

  await taskRow(page, name).getByRole('link', { name }).click()
  await expect(page).toHaveURL(/\/tasks\/\d+$/)
  const logs = page.getByTestId('task-logs')
  await expect(logs).toContainText('task created')
  await expect(logs).toContainText('run 1 started')
  await expect(logs).toContainText('completed')
  await expectToastCount(page, 'Task completed', 0)
  expect(consoleMessages).toEqual([])

  const taskId = Number(page.url().split('/').at(-1))
  expect((await api.getTask(taskId)).status).toBe('completed')
})

test('failing task runs three times and shows one failed toast', async ({ page, api }) => {
  const name = uniqueName('always fails')
  await page.goto('/')

  await fillCreateForm(page, { name, executionTime: '0.2', failurePercent: '100' })
  await page.getByRole('button', { name: 'Create task' }).click()

  await expect(statusCell(page, name)).toHaveText('Failed', { timeout: 30_000 })
  await expect(taskRow(page, name).getByTestId('task-runs')).toHaveText('3 / 3')
  // Several more polls see the same failed task; none of them may toast again.
  await sleep(3000)
  await expectToastCount(page, 'Task failed', 1)

  await taskRow(page, name).getByRole('link', { name }).click()
  const logs = page.getByTestId('task-logs')
  for (const run of [1, 2, 3]) {
    await expect(logs).toContainText(`run ${run} started`)
    await expect(logs).toContainText(`run ${run} failed`)
  }
  await expect(logs).toContainText('failed for good after 3 runs')
  await expect(page.getByTestId('task-runs')).toContainText('3 / 3')

  const taskId = Number(page.url().split('/').at(-1))
  const task = await api.getTask(taskId)
  expect(task.status).toBe('failed')
  expect(task.attempts).toBe(3)
})

test('invalid form shows field errors and creates nothing', async ({ page, api }) => {
  const totalBefore = (await api.listTasks()).total
  await page.goto('/')

  await fillCreateForm(page, { name: '', executionTime: '-5', failurePercent: '0' })
  await page.getByRole('button', { name: 'Create task' }).click()

  await expect(nameInput(page)).toHaveAttribute('aria-invalid', 'true')
  await expect(nameInput(page)).toHaveAccessibleDescription('Name is required.')
  await expect(page.getByLabel('Execution time (s)')).toHaveAccessibleDescription('Execution time must be 0 seconds or more, got -5.')
  await expect(page.getByRole('listitem').filter({ hasText: 'Task not created' }).first()).toBeVisible()
  expect((await api.listTasks()).total).toBe(totalBefore)
})

test('server validation error shows next to its field', async ({ page, api }) => {
  const totalBefore = (await api.listTasks()).total
  await page.goto('/')

  await fillCreateForm(page, { name: uniqueName('too slow'), executionTime: '99999999', failurePercent: '0' })
  await page.getByRole('button', { name: 'Create task' }).click()

  await expect(page.getByLabel('Execution time (s)')).toHaveAttribute('aria-invalid', 'true')
  await expect(page.getByLabel('Execution time (s)')).toHaveAccessibleDescription(/execution_time/)
  await expectToastCount(page, 'Task not created', 1)
  expect((await api.listTasks()).total).toBe(totalBefore)
})

test('form submits with the keyboard once per submission', async ({ page, api }) => {
  const name = uniqueName('keyboard')
  await page.goto('/')

  await nameInput(page).focus()
  await page.keyboard.type(name)
  await page.keyboard.press('Enter')
  await page.keyboard.press('Enter')

  await expect(taskRow(page, name)).toBeVisible()
  await sleep(1500)
  expect((await api.listTasks({ q: name })).total).toBe(1)
})

test('filters and search narrow the list', async ({ page, api }) => {
  const marker = uniqueName('filter')
  await api.createTask({ name: `${marker} note`, type: 'notification', execution_time: 0 })
  await api.createTask({ name: `${marker} job`, type: 'processing', execution_time: 0 })
  await page.goto('/')

  await page.getByRole('searchbox', { name: 'Search by name' }).fill(marker)
  await expect(page.getByTestId('task-link')).toHaveCount(2)

  await page.getByRole('combobox', { name: 'Filter by type' }).click()
  await page.getByRole('option', { name: 'Notification' }).click()

  await expect(page.getByTestId('task-link')).toHaveCount(1)
  await expect(page.getByTestId('task-link')).toHaveText(`${marker} note`)
})

test('cancel stops a running task from its detail page', async ({ page, api }) => {
  const task = await api.createTask({ name: uniqueName('long job'), execution_time: 60 })
  await api.waitForStatus(task.id, 'running')
  await page.goto(`/tasks/${task.id}`)

  await page.getByRole('button', { name: 'Cancel' }).click()

  await expect(page.locator('[data-status]').first()).toHaveText('Cancelled')
  await expect(page.getByRole('button', { name: 'Cancel' })).toHaveCount(0)
  await expectToastCount(page, 'Task cancelled', 1)
  expect((await api.getTask(task.id)).status).toBe('cancelled')
})

test('run again creates a copy with the same settings', async ({ page, api }) => {
  const original = await api.createTask({ name: uniqueName('copy me'), type: 'notification', execution_time: 0.5, failure_rate: 0.25 })
  await page.goto(`/tasks/${original.id}`)

  await page.getByRole('button', { name: 'Run again' }).click()

  await page.waitForURL(url => /^\/tasks\/\d+$/.test(url.pathname) && url.pathname !== `/tasks/${original.id}`)
  const copyId = Number(page.url().split('/').at(-1))
  const copy = await api.getTask(copyId)
  expect(copy.name).toBe(original.name)
  expect(copy.type).toBe('notification')
  expect(copy.execution_time).toBe(0.5)
  expect(copy.failure_rate).toBe(0.25)
})

test('delete removes a finished task', async ({ page, api }) => {
  const task = await api.createTask({ name: uniqueName('to delete'), execution_time: 0 })
  await api.waitForStatus(task.id, 'completed')
  await page.goto(`/tasks/${task.id}`)

  await page.getByRole('button', { name: 'Delete' }).click()

  await page.waitForURL(url => url.pathname === '/')
  await expect(page.getByRole('link', { name: task.name, exact: true })).toHaveCount(0)
  const response = await fetch(`${api.baseUrl}/tasks/${task.id}`)
  expect(response.status).toBe(404)
})

test('pagination shows the next page of tasks', async ({ page, api }) => {
  const marker = uniqueName('paged')
  for (let index = 1; index <= 21; index++) {
    await api.createTask({ name: `${marker} ${String(index).padStart(2, '0')}`, execution_time: 0 })
  }
  await page.goto('/')
  const searchResponse = page.waitForResponse(response => new URL(response.url()).searchParams.get('q') === marker)
  await page.getByRole('searchbox', { name: 'Search by name' }).fill(marker)
  await searchResponse
  await expect(page.getByTestId('task-link')).toHaveCount(20)
  await expect(page.getByTestId('task-link').first()).toHaveText(`${marker} 21`)

  await page.locator('[data-slot="item"]').filter({ hasText: /^2$/ }).click()

  await expect(page.getByTestId('task-link')).toHaveCount(1)
  await expect(page.getByTestId('task-link')).toHaveText(`${marker} 01`)
})
