import { expect, expectToastCount, test, uniqueName } from './support/fixtures'
import { readServerState, startBackend, stopProcess, writeServerState } from './support/servers'

// The file name sorts last: this test stops the shared backend, and the others need it up.
test('unreachable notice shows while the backend is down and clears after', async ({ page, api }) => {
  await page.goto('/')
  await expect(page.getByRole('heading', { name: 'Tasks', exact: true })).toBeVisible()
  const notice = page.getByTestId('api-unreachable')
  await expect(notice).toHaveCount(0)

  const state = readServerState()
  await stopProcess(state.backendPid)
  state.backendPid = null
  writeServerState(state)
  try {
    await expect(notice).toBeVisible({ timeout: 10_000 })
    await expectToastCount(page, 'Connection lost', 1)

    const freshPage = await page.context().newPage()
    const freshConsole: string[] = []
    freshPage.on('console', message => freshConsole.push(message.text()))
    const response = await freshPage.goto('/')
    expect(response?.status()).toBe(200)
    await expect(freshPage.getByTestId('api-unreachable')).toBeVisible()
    expect(await response?.text()).toContain('The task API is unreachable')
    await freshPage.waitForTimeout(1500)
    expect(freshConsole.filter(text => /hydrat|mismatch/i.test(text))).toEqual([])
    await freshPage.close()
  }
  finally {
    state.backendPid = await startBackend(state)
    writeServerState(state)
  }

  await expect(notice).toHaveCount(0, { timeout: 15_000 })
  const task = await api.createTask({ name: uniqueName('after restart'), execution_time: 0 })
  await expect(page.getByRole('link', { name: task.name, exact: true })).toBeVisible()
  await expectToastCount(page, 'Connection lost', 1)
  await expectToastCount(page, 'Connection restored', 1)
})
