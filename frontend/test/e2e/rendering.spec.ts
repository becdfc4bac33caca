import { expect, expectToastCount, test, uniqueName } from './support/fixtures'
import { publicApiBase, serverApiBase, sleep } from './support/servers'

test('server HTML contains task data without JavaScript', async ({ api, servers, baseURL }) => {
  const task = await api.createTask({ name: uniqueName('ssr visible'), execution_time: 0 })

  const dashboard = await fetch(`${baseURL}/`)
  const dashboardHtml = await dashboard.text()
  const detail = await fetch(`${baseURL}/tasks/${task.id}`)
  const detailHtml = await detail.text()

  expect(dashboard.status).toBe(200)
  expect(dashboardHtml).toContain(task.name)
  expect(detail.status).toBe(200)
  expect(detailHtml).toContain(task.name)
  for (const html of [dashboardHtml, detailHtml]) {
    expect(html).not.toContain(serverApiBase(servers))
    expect(html).not.toContain('apiBaseServer')
    expect(html).not.toContain('apiToken')
    expect(html).toContain(publicApiBase(servers))
  }
})

test('security headers allow the public API only', async ({ servers, baseURL }) => {
  const response = await fetch(`${baseURL}/`)
  const policy = response.headers.get('content-security-policy') ?? ''

  expect(policy).toContain(`connect-src 'self' ${publicApiBase(servers)}`)
  expect(policy).toContain("frame-ancestors 'none'")
  expect(policy).toMatch(/script-src 'self' 'nonce-[\w+/=]+'/)
  expect(policy).not.toContain("'unsafe-inline' 'unsafe-eval'")
  expect(response.headers.get('x-content-type-options')).toBe('nosniff')
  expect(response.headers.get('referrer-policy')).toBe('strict-origin-when-cross-origin')
})

test('unknown task id shows the not-found page', async ({ page }) => {
  const response = await page.goto('/tasks/987654321')

  expect(response?.status()).toBe(404)
  await expect(page.getByRole('heading', { name: 'Not found' })).toBeVisible()
  await expect(page.getByText('Task 987654321 does not exist.')).toBeVisible()

  const invalidIdResponse = await page.goto('/tasks/not-a-number')
  expect(invalidIdResponse?.status()).toBe(404)
  await page.getByRole('button', { name: 'Back to tasks' }).click()
  await expect(page).toHaveURL(/\/$/)
})

test('html in a task name is shown as text', async ({ page, api }) => {
  const name = `<img src=x onerror=alert(1)> ${uniqueName('xss')}`
  const task = await api.createTask({ name, execution_time: 0 })
  const dialogs: string[] = []
  page.on('dialog', async (dialog) => {
    dialogs.push(dialog.message())
    await dialog.dismiss()
  })

  await page.goto('/')
  await expect(page.getByRole('link', { name, exact: true })).toBeVisible()
  await page.goto(`/tasks/${task.id}`)
  await expect(page.getByTestId('task-name')).toHaveText(name)

  expect(await page.locator('img[src="x"]').count()).toBe(0)
  expect(dialogs).toEqual([])
})

test('unicode and long names are kept and truncated', async ({ page, api }) => {
  const unicodeName = `📦 Отчёт №1 — 数据处理 ✅ مرحبا e\u0301 ${uniqueName('u')}`
  const longName = `${'long name '.repeat(19)}${uniqueName('end')}`.slice(0, 200)
  await api.createTask({ name: unicodeName, execution_time: 0 })
  const longTask = await api.createTask({ name: longName, execution_time: 0 })

  await page.goto('/')

  await expect(page.getByRole('link', { name: unicodeName, exact: true })).toHaveText(unicodeName)
  const longLink = page.getByRole('link', { name: longName, exact: true })
  await expect(longLink).toHaveAttribute('title', longName)
  const isTruncated = await longLink.evaluate(element => element.scrollWidth > element.clientWidth && getComputedStyle(element).textOverflow === 'ellipsis')
  expect(isTruncated).toBe(true)
  await page.goto(`/tasks/${longTask.id}`)
  await expect(page.getByTestId('task-name')).toHaveText(longName)
})

test.describe('in Los Angeles with a German locale', () => {
  test.use({ timezoneId: 'America/Los_Angeles', locale: 'de-DE' })

  test('pages hydrate without warnings and show local times', async ({ page, api, consoleMessages }) => {
    const task = await api.createTask({ name: uniqueName('time zone'), execution_time: 0 })
    const expectedCreated = new Intl.DateTimeFormat('de-DE', { dateStyle: 'medium', timeStyle: 'medium', timeZone: 'America/Los_Angeles' })
      .format(new Date(task.created_at))

    await page.goto('/')
    await expect(page.getByRole('row').filter({ hasText: task.name }).locator('time')).toHaveText(expectedCreated)
    await page.getByRole('link', { name: task.name, exact: true }).click()
    await expect(page.getByTestId('task-name')).toHaveText(task.name)
    await page.reload()
    await expect(page.getByTestId('task-name')).toHaveText(task.name)
    await page.getByRole('link', { name: 'All tasks' }).click()
    await expect(page.getByRole('link', { name: task.name, exact: true })).toBeVisible()
    await sleep(1500)

    expect(consoleMessages.filter(message => /hydrat|mismatch/i.test(message))).toEqual([])
    expect(consoleMessages).toEqual([])
  })
})

test('leaving a detail page stops its requests', async ({ page, api }) => {
  const task = await api.createTask({ name: uniqueName('watched'), execution_time: 60 })
  const requests: Array<{ url: string, at: number }> = []
  page.on('request', request => requests.push({ url: request.url(), at: Date.now() }))

  await page.goto(`/tasks/${task.id}`)
  await sleep(2500)
  await page.getByRole('link', { name: 'All tasks' }).click()
  await expect(page.getByRole('heading', { name: 'Tasks', exact: true })).toBeVisible()
  const leftAt = Date.now()
  await sleep(4500)

  const taskPath = new RegExp(`/tasks/${task.id}(/logs)?$`)
  const detailPolls = requests.filter(request => taskPath.test(new URL(request.url).pathname))
  expect(detailPolls.length).toBeGreaterThanOrEqual(2)
  expect(detailPolls.filter(request => request.at > leftAt)).toEqual([])
  const listPolls = requests.filter(request => request.at > leftAt && new URL(request.url).pathname === '/tasks/')
  // One poll per second while the list is shown: never a burst, never stacked timers.
  expect(listPolls.length).toBeGreaterThanOrEqual(3)
  expect(listPolls.length).toBeLessThanOrEqual(6)

  await page.goto(`/tasks/${task.id}`)
  await page.getByRole('button', { name: 'Cancel' }).click()
  await expectToastCount(page, 'Task cancelled', 1)
})

test('dashboard fits a phone screen', async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 })

  await page.goto('/')

  await expect(page.getByRole('button', { name: 'Create task' })).toBeVisible()
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
  expect(overflow).toBeLessThanOrEqual(0)
})
