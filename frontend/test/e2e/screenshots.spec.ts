import { resolve } from 'node:path'
import { expect, test, uniqueName } from './support/fixtures'
import { REPO_DIR } from './support/servers'

const SCREENSHOT_DIR = resolve(REPO_DIR, 'docs/screenshots')

test.use({ viewport: { width: 1280, height: 900 } })

test('screenshots of the dashboard and the detail page', async ({ page, api }) => {
  await api.createTask({ name: uniqueName('Send weekly report'), type: 'notification', execution_time: 1 })
  const failing = await api.createTask({ name: uniqueName('Resize images'), execution_time: 0.2, failure_rate: 1 })
  await api.createTask({ name: uniqueName('Rebuild search index'), execution_time: 120 })
  await api.waitForStatus(failing.id, 'failed')

  await page.goto('/')
  await expect(page.getByRole('progressbar').first()).toBeVisible()
  await page.screenshot({ path: resolve(SCREENSHOT_DIR, 'dashboard.png'), fullPage: true })

  await page.goto(`/tasks/${failing.id}`)
  await expect(page.getByTestId('task-logs')).toContainText('failed for good')
  await page.screenshot({ path: resolve(SCREENSHOT_DIR, 'task-detail.png'), fullPage: true })
})
