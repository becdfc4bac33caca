import { mockNuxtImport } from '@nuxt/test-utils/runtime'
import { createPinia, setActivePinia } from 'pinia'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { useTasksStore } from '~/stores/tasks'
import type { Task, TaskListResponse, TaskStatus } from '~/types/tasks'
import { createFakeFetch, createHttpError, createNetworkError, type FakeRequest } from './fake-fetch'

const { toastAdd } = vi.hoisted(() => ({ toastAdd: vi.fn() }))

mockNuxtImport('useToast', () => () => ({ add: toastAdd, update: vi.fn(), remove: vi.fn(), clear: vi.fn(), toasts: { value: [] } }))

const POLL_INTERVAL_MS = 2000
const API_BASE = 'http://localhost:8000'

function buildTask(overrides: Partial<Task> = {}): Task {
  return {
    id: 1,
    name: 'Send report',
    type: 'processing',
    execution_time: 2,
    failure_rate: 0,
    status: 'pending',
    attempts: 0,
    max_attempts: 3,
    run_at: '2026-12-04T20:00:00Z',
    last_error: null,
    created_at: '2026-12-04T20:00:00Z',
    updated_at: '2026-12-04T20:00:00Z',
    started_at: null,
    finished_at: null,
    ...overrides,
  }
}

function buildListResponse(items: Task[], total = items.length): TaskListResponse {
  return {
    items,
    total,
    limit: 20,
    offset: 0,
    counts: { pending: 0, running: 0, completed: 0, failed: 0, cancelled: 0 },
  }
}

function setVisibility(state: DocumentVisibilityState): void {
  Object.defineProperty(document, 'visibilityState', { value: state, configurable: true })
  document.dispatchEvent(new Event('visibilitychange'))
}

function toastTitles(): string[] {
  return toastAdd.mock.calls.map(([toast]) => toast.title)
}

let requests: FakeRequest[]

beforeEach(() => {
  setActivePinia(createPinia())
  vi.useFakeTimers()
  const fake = createFakeFetch()
  requests = fake.requests
  vi.stubGlobal('$fetch', fake.fetchMock)
  toastAdd.mockClear()
  Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true })
})

afterEach(() => {
  useTasksStore().stopPolling()
  vi.useRealTimers()
  vi.unstubAllGlobals()
})

/** Lets pending promise callbacks run, with fake timers installed. */
async function flushPromises(): Promise<void> {
  await vi.advanceTimersByTimeAsync(0)
}

describe('list query', () => {
  it('sends filters and the first page offset', async () => {
    const store = useTasksStore()

    void store.setFilters({ status: 'running', type: 'notification', query: '  weekly ' })

    expect(requests).toHaveLength(1)
    expect(requests[0]!.path).toBe('/tasks/')
    expect(requests[0]!.options.baseURL).toBe(API_BASE)
    expect(requests[0]!.options.query).toEqual({ limit: 20, offset: 0, status: 'running', type: 'notification', q: 'weekly' })
  })

  it('omits empty filters', async () => {
    const store = useTasksStore()

    void store.fetchList()

    expect(requests[0]!.options.query).toEqual({ limit: 20, offset: 0 })
  })

  it('turns the page into an offset', async () => {
    const store = useTasksStore()
    const firstLoad = store.fetchList()
    requests[0]!.resolve(buildListResponse([buildTask()], 45))
    await firstLoad

    void store.setPage(3)

    expect(requests[1]!.options.query).toMatchObject({ limit: 20, offset: 40 })
  })

  it('goes back to page 1 when a filter changes', async () => {
    const store = useTasksStore()
    const firstLoad = store.fetchList()
    requests[0]!.resolve(buildListResponse([buildTask()], 45))
    await firstLoad
    const secondLoad = store.setPage(2)
    requests[1]!.resolve(buildListResponse([buildTask()], 45))
    await secondLoad

    void store.setFilters({ type: 'processing' })

    expect(store.page).toBe(1)
    expect(requests[2]!.options.query).toMatchObject({ offset: 0, type: 'processing' })
  })

  it('ignores an older response arriving late', async () => {
    const store = useTasksStore()
    const olderLoad = store.fetchList()
    const newerLoad = store.setFilters({ status: 'failed' })

    requests[1]!.resolve(buildListResponse([buildTask({ id: 2, status: 'failed' })]))
    await newerLoad
    await olderLoad.catch(() => undefined)

    expect(requests[0]!.isAborted).toBe(true)
    expect(store.tasks.map(task => task.id)).toEqual([2])
  })
})

describe('polling', () => {
  it('keeps one timer when started twice', () => {
    const store = useTasksStore()

    store.startPolling({ kind: 'list' })
    store.startPolling({ kind: 'list' })

    expect(vi.getTimerCount()).toBe(1)
  })

  it('sends one request per interval', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'list' })

    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS - 1)
    expect(requests).toHaveLength(0)
    await vi.advanceTimersByTimeAsync(1)
    expect(requests).toHaveLength(1)

    requests[0]!.resolve(buildListResponse([]))
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    expect(requests).toHaveLength(2)
  })

  it('never starts a poll while the previous one is in flight', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'list' })
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    expect(requests).toHaveLength(1)

    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 10)

    expect(requests).toHaveLength(1)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('skips a tick while another list request is in flight', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'list' })
    void store.setFilters({ status: 'running' })

    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    expect(requests).toHaveLength(1)
    expect(vi.getTimerCount()).toBe(1)
  })

  it('sends nothing after stopPolling', async () => {
    const store = useTasksStore()
    const handle = store.startPolling({ kind: 'list' })

    store.stopPolling(handle)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 5)

    expect(requests).toHaveLength(0)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('ignores stopPolling with the handle of an older poll', async () => {
    const store = useTasksStore()
    const oldHandle = store.startPolling({ kind: 'list' })
    store.startPolling({ kind: 'task', taskId: 7 })

    store.stopPolling(oldHandle)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    expect(requests.map(request => request.path)).toEqual(['/tasks/7', '/tasks/7/logs'])
  })

  it('pauses while the tab is hidden and resumes with one request', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'list' })

    setVisibility('hidden')
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 30)
    expect(requests).toHaveLength(0)
    expect(vi.getTimerCount()).toBe(0)

    setVisibility('visible')
    await flushPromises()
    expect(requests).toHaveLength(1)

    requests[0]!.resolve(buildListResponse([]))
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS - 1)
    expect(requests).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(1)
    expect(requests).toHaveLength(2)
  })

  it('polls the task and its logs on the detail page', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'task', taskId: 5 })

    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    expect(requests.map(request => request.path)).toEqual(['/tasks/5', '/tasks/5/logs'])
  })

  it('sends no request for a task after leaving its page', async () => {
    const store = useTasksStore()
    const handle = store.startPolling({ kind: 'task', taskId: 5 })
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    store.stopPolling(handle)
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 5)

    expect(requests).toHaveLength(2)
    expect(requests.every(request => request.isAborted)).toBe(true)
    expect(store.selectedTask).toBeNull()
  })

  it('stops polling a task that no longer exists', async () => {
    const store = useTasksStore()
    store.startPolling({ kind: 'task', taskId: 5 })
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)

    requests[0]!.reject(createHttpError(404, { detail: 'task 5 not found' }))
    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS * 5)

    expect(requests).toHaveLength(2)
    expect(store.isSelectedTaskMissing).toBe(true)
  })
})

describe('toasts', () => {
  async function pollOnce(store: ReturnType<typeof useTasksStore>, items: Task[]): Promise<void> {
    const load = store.fetchList()
    requests.at(-1)!.resolve(buildListResponse(items))
    await load
  }

  it('announces one final failure for a task that retries', async () => {
    const store = useTasksStore()
    const statuses: Array<[TaskStatus, number]> = [
      ['pending', 0], ['running', 0], ['pending', 1], ['running', 1], ['pending', 2], ['running', 2],
      ['failed', 3], ['failed', 3], ['failed', 3],
    ]

    for (const [status, attempts] of statuses) {
      await pollOnce(store, [buildTask({ status, attempts, last_error: attempts ? 'simulated failure' : null })])
    }

    expect(toastTitles()).toEqual(['Task failed'])
  })

  it('announces one completion per task seen running', async () => {
    const store = useTasksStore()

    await pollOnce(store, [buildTask({ id: 1, status: 'running' }), buildTask({ id: 2, status: 'pending' })])
    await pollOnce(store, [buildTask({ id: 1, status: 'completed' }), buildTask({ id: 2, status: 'running' })])
    await pollOnce(store, [buildTask({ id: 1, status: 'completed' }), buildTask({ id: 2, status: 'completed' })])
    await pollOnce(store, [buildTask({ id: 1, status: 'completed' }), buildTask({ id: 2, status: 'completed' })])

    expect(toastTitles()).toEqual(['Task completed', 'Task completed'])
  })

  it('stays quiet for tasks finished before the page loaded', async () => {
    const store = useTasksStore()

    await pollOnce(store, [buildTask({ id: 1, status: 'completed' }), buildTask({ id: 2, status: 'failed', attempts: 3 })])
    await pollOnce(store, [buildTask({ id: 1, status: 'completed' }), buildTask({ id: 2, status: 'failed', attempts: 3 })])

    expect(toastAdd).not.toHaveBeenCalled()
  })

  it('announces completion of a task loaded during SSR once polling starts', async () => {
    const store = useTasksStore()
    store.tasks = [buildTask({ id: 3, status: 'running' })]
    store.startPolling({ kind: 'list' })

    await vi.advanceTimersByTimeAsync(POLL_INTERVAL_MS)
    requests[0]!.resolve(buildListResponse([buildTask({ id: 3, status: 'completed' })]))
    await flushPromises()

    expect(toastTitles()).toEqual(['Task completed'])
  })

  it('does not announce a cancel the user made', async () => {
    const store = useTasksStore()
    await pollOnce(store, [buildTask({ id: 4, status: 'running' })])

    const cancel = store.cancelTask(4)
    requests.at(-1)!.resolve(buildTask({ id: 4, status: 'cancelled' }))
    await cancel
    await pollOnce(store, [buildTask({ id: 4, status: 'cancelled' })])

    expect(requests.at(-2)!.path).toBe('/api/tasks/4/cancel')
    expect(requests.at(-2)!.options.method).toBe('POST')
    expect(toastTitles()).toEqual(['Task cancelled'])
  })

  it('repeats no read error toast on later polls with the same error', async () => {
    const store = useTasksStore()

    for (let poll = 0; poll < 3; poll++) {
      const load = store.fetchList()
      requests.at(-1)!.reject(createHttpError(500, { detail: 'database query failed' }))
      await load
    }

    expect(toastTitles()).toEqual(['Loading tasks failed'])
    expect(store.listErrorMessage).toBe('Loading tasks failed: database query failed')
  })
})

describe('unreachable API notice', () => {
  it('is set once on network errors and cleared with one recovery toast', async () => {
    const store = useTasksStore()

    for (let poll = 0; poll < 3; poll++) {
      const load = store.fetchList()
      requests.at(-1)!.reject(createNetworkError())
      await load
    }
    expect(store.isApiUnreachable).toBe(true)
    expect(toastTitles()).toEqual(['Connection lost'])

    const recovery = store.fetchList()
    requests.at(-1)!.resolve(buildListResponse([]))
    await recovery
    const laterPoll = store.fetchList()
    requests.at(-1)!.resolve(buildListResponse([]))
    await laterPoll

    expect(store.isApiUnreachable).toBe(false)
    expect(toastTitles()).toEqual(['Connection lost', 'Connection restored'])
  })

  it('treats a 503 as unreachable and keeps its detail', async () => {
    const store = useTasksStore()

    const load = store.fetchList()
    requests[0]!.reject(createHttpError(503, { status: 'unavailable', detail: 'database unavailable' }))
    await load

    expect(store.isApiUnreachable).toBe(true)
    expect(store.unreachableDetail).toBe('database unavailable')
  })

  it('never puts the request URL into state', async () => {
    const store = useTasksStore()

    const load = store.fetchList()
    requests[0]!.reject(createNetworkError())
    await load

    expect(JSON.stringify(store.$state)).not.toContain('localhost:8000')
  })
})

describe('createTask', () => {
  const request = { name: 'Report', type: 'processing' as const, execution_time: 2, failure_rate: 0.5 }

  it('posts to the Nuxt server route with the idempotency key', async () => {
    const store = useTasksStore()

    const creation = store.createTask(request, 'key-1')
    requests[0]!.resolve(buildTask({ id: 9, name: 'Report' }))
    const result = await creation

    expect(requests[0]!.path).toBe('/api/tasks')
    expect(requests[0]!.options.method).toBe('POST')
    expect(requests[0]!.options.headers).toEqual({ 'Idempotency-Key': 'key-1' })
    expect(requests[0]!.options.body).toEqual(request)
    expect(result.ok).toBe(true)
    expect(store.tasks.map(task => task.id)).toEqual([9])
    expect(toastTitles()).toEqual(['Task created'])
  })

  it('maps 422 details to field errors', async () => {
    const store = useTasksStore()
    const detail = [
      { loc: ['body', 'execution_time'], msg: 'Value error, execution_time must be between 0 and 3600 seconds, got -5', type: 'value_error' },
      { loc: ['body', 'name'], msg: 'name must not be blank', type: 'value_error' },
    ]

    const creation = store.createTask(request, 'key-2')
    requests[0]!.reject(createHttpError(422, { detail }))
    const result = await creation

    expect(result).toEqual({
      ok: false,
      message: 'execution_time must be between 0 and 3600 seconds, got -5 name must not be blank',
      fieldErrors: [
        { name: 'execution_time', message: 'execution_time must be between 0 and 3600 seconds, got -5' },
        { name: 'name', message: 'name must not be blank' },
      ],
      isRetryable: false,
    })
    expect(toastTitles()).toEqual(['Task not created'])
  })

  it('shows the server message of a 409', async () => {
    const store = useTasksStore()

    const creation = store.createTask(request, 'key-3')
    requests[0]!.reject(createHttpError(409, { detail: 'Idempotency-Key key-3 was used for another request body' }))
    await creation

    expect(toastAdd.mock.calls[0]![0].description).toBe('Idempotency-Key key-3 was used for another request body')
  })

  it('marks a network failure as retryable', async () => {
    const store = useTasksStore()

    const creation = store.createTask(request, 'key-4')
    requests[0]!.reject(createNetworkError())
    const result = await creation

    expect(result).toMatchObject({ ok: false, isRetryable: true })
  })
})
