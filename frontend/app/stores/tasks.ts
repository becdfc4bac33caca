import { defineStore } from 'pinia'
import type {
  FieldError,
  Task,
  TaskCounts,
  TaskCreateRequest,
  TaskFilters,
  TaskListResponse,
  TaskLog,
  TaskStatus,
} from '~/types/tasks'
import { describeApiError, type ApiProblem } from '~/utils/api-errors'
import { fetchJson } from '~/utils/http'
import { createTaskAnnouncer } from '~/utils/task-announcer'
import { buildListQuery, createEmptyCounts, DEFAULT_PAGE_SIZE, STATUS_LABELS } from '~/utils/tasks'

/** Used when NUXT_PUBLIC_POLL_INTERVAL_MS is missing or not a number of at least 100. */
const DEFAULT_POLL_INTERVAL_MS = 2000
const MIN_POLL_INTERVAL_MS = 100
/** A read that takes longer counts as failed, so a hung backend cannot stall SSR or polling. */
const READ_TIMEOUT_MS = 10_000
const MUTATION_TIMEOUT_MS = 15_000
const CONNECTION_LOST_TOAST_ID = 'api-connection-lost'
const CONNECTION_RESTORED_TOAST_ID = 'api-connection-restored'
const FINISHED_TOAST_COLORS: Record<TaskStatus, 'success' | 'error' | 'warning'> = {
  pending: 'warning',
  running: 'warning',
  completed: 'success',
  failed: 'error',
  cancelled: 'warning',
}

export type PollTarget = { kind: 'list' } | { kind: 'task', taskId: number }

export type TaskLoadResult = 'found' | 'not-found' | 'failed'

export type CreateTaskResult =
  | { ok: true, task: Task }
  | { ok: false, message: string, fieldErrors: FieldError[], isRetryable: boolean }

interface ActivePoll {
  handle: number
  target: PollTarget
  timer: ReturnType<typeof setTimeout> | null
  /** Set when the polled task no longer exists. */
  isHalted: boolean
}

export const useTasksStore = defineStore('tasks', () => {
  const runtimeConfig = useRuntimeConfig()
  const toast = useToast()

  // State (serialized from the SSR render into the page payload).
  const tasks = ref<Task[]>([])
  const total = ref(0)
  const counts = ref<TaskCounts>(createEmptyCounts())
  const filters = ref<TaskFilters>({ status: null, type: null, query: '' })
  const page = ref(1)
  const pageSize = ref(DEFAULT_PAGE_SIZE)
  const isListLoading = ref(false)
  const hasLoadedList = ref(false)
  const listErrorMessage = ref<string | null>(null)

  const selectedTaskId = ref<number | null>(null)
  const selectedTask = ref<Task | null>(null)
  const selectedLogs = ref<TaskLog[]>([])
  const isSelectedTaskMissing = ref(false)
  const taskErrorMessage = ref<string | null>(null)

  const isApiUnreachable = ref(false)
  /** Extra reason given by the API while it is unavailable, for example a 503 detail. */
  const unreachableDetail = ref<string | null>(null)

  // Per-store bookkeeping. These live in this store instance (one per SSR request and one
  // per browser tab) and are not state, so they never reach the payload.
  const announcer = createTaskAnnouncer()
  let listRequestNumber = 0
  let listAbortController: AbortController | null = null
  let taskRequestNumber = 0
  let taskAbortController: AbortController | null = null
  let activePoll: ActivePoll | null = null
  let lastPollHandle = 0
  let lastReadErrorMessage: string | null = null

  const pageCount = computed(() => Math.max(1, Math.ceil(total.value / pageSize.value)))

  const pollIntervalMs = computed(() => {
    const configured = Number(runtimeConfig.public.pollIntervalMs)
    return Number.isFinite(configured) && configured >= MIN_POLL_INTERVAL_MS ? configured : DEFAULT_POLL_INTERVAL_MS
  })

  // Requests

  /** Base URL for reads: the server-only base during SSR (when set), the public one in the browser. */
  function readBaseUrl(): string {
    if (import.meta.server) {
      return String(runtimeConfig.apiBaseServer || runtimeConfig.public.apiBase)
    }
    return String(runtimeConfig.public.apiBase)
  }

  function readFromApi<T>(path: string, options: { query?: Record<string, string | number>, signal?: AbortSignal } = {}): Promise<T> {
    return fetchJson<T>(path, {
      baseURL: readBaseUrl(),
      query: options.query,
      signal: options.signal,
      timeout: READ_TIMEOUT_MS,
      // ofetch retries GETs once by default; polling already retries, and a second request
      // would double the load on a struggling backend.
      retry: 0,
    })
  }

  /** Sends a mutation through the Nuxt server routes, which add the API token when one is configured. */
  function mutateThroughServer<T>(path: string, options: { method: 'POST' | 'DELETE', body?: unknown, headers?: Record<string, string> }): Promise<T> {
    return fetchJson<T>(path, {
      method: options.method,
      body: options.body as Record<string, unknown> | undefined,
      headers: options.headers,
      timeout: MUTATION_TIMEOUT_MS,
      retry: 0,
    })
  }

  // Notices

  function showToast(toastOptions: Parameters<typeof toast.add>[0]): void {
    // Toasts are browser-only: a toast added during SSR would travel in the payload and
    // pop up again after hydration.
    if (import.meta.client) {
      toast.add(toastOptions)
    }
  }

  function removeToast(id: string): void {
    if (import.meta.client) {
      toast.remove(id)
    }
  }

  function markApiReachable(): void {
    if (!isApiUnreachable.value) {
      return
    }
    isApiUnreachable.value = false
    unreachableDetail.value = null
    removeToast(CONNECTION_LOST_TOAST_ID)
    showToast({ id: CONNECTION_RESTORED_TOAST_ID, title: 'Connection restored', description: 'The task API responds again.', color: 'success', icon: 'i-lucide-plug-zap' })
  }

  function markApiUnreachable(problem: ApiProblem): void {
    unreachableDetail.value = problem.status === null ? null : problem.message
    if (isApiUnreachable.value) {
      return
    }
    isApiUnreachable.value = true
    removeToast(CONNECTION_RESTORED_TOAST_ID)
    showToast({ id: CONNECTION_LOST_TOAST_ID, title: 'Connection lost', description: 'Cannot reach the task API. Retrying automatically.', color: 'error', icon: 'i-lucide-unplug' })
  }

  /** Reports a failed read once per distinct message, so a poll that keeps failing does not repeat toasts. */
  function reportReadError(problem: ApiProblem, action: string): string | null {
    if (problem.kind === 'aborted') {
      return null
    }
    if (problem.kind === 'unreachable') {
      markApiUnreachable(problem)
      return null
    }

    markApiReachable()
    const message = `${action} failed: ${problem.message}`
    if (message !== lastReadErrorMessage) {
      lastReadErrorMessage = message
      showToast({ title: `${action} failed`, description: problem.message, color: 'error' })
    }
    return message
  }

  function announceFinishedTasks(observed: readonly Task[]): void {
    for (const task of announcer.observeTasks(observed)) {
      const title = `Task ${STATUS_LABELS[task.status].toLowerCase()}`
      const description = task.status === 'failed' && task.last_error
        ? `“${task.name}”: ${task.last_error}`
        : `“${task.name}”`
      showToast({
        id: `task-finished-${task.id}`,
        title,
        description,
        color: FINISHED_TOAST_COLORS[task.status],
      })
    }
  }

  // List

  const isListRequestInFlight = () => listAbortController !== null

  /** Loads the current page of the list. A newer call cancels an older one still in flight. */
  async function fetchList(): Promise<void> {
    listAbortController?.abort()
    const controller = new AbortController()
    listAbortController = controller
    const requestNumber = ++listRequestNumber
    isListLoading.value = true

    try {
      const response = await readFromApi<TaskListResponse>('/tasks/', {
        query: buildListQuery(filters.value, page.value, pageSize.value),
        signal: controller.signal,
      })
      if (requestNumber !== listRequestNumber) {
        return
      }
      applyListResponse(response)
    }
    catch (error) {
      if (requestNumber !== listRequestNumber) {
        return
      }
      const message = reportReadError(describeApiError(error), 'Loading tasks')
      if (message) {
        listErrorMessage.value = message
      }
    }
    finally {
      if (requestNumber === listRequestNumber) {
        listAbortController = null
        isListLoading.value = false
      }
    }
  }

  function applyListResponse(response: TaskListResponse): void {
    tasks.value = response.items
    total.value = response.total
    counts.value = { ...createEmptyCounts(), ...response.counts }
    hasLoadedList.value = true
    listErrorMessage.value = null
    lastReadErrorMessage = null
    markApiReachable()
    announceFinishedTasks(response.items)

    // Tasks deleted elsewhere can leave the current page past the end: show the last page instead.
    if (response.items.length === 0 && response.total > 0 && page.value > pageCount.value) {
      page.value = pageCount.value
      void fetchList()
    }
  }

  function setFilters(changes: Partial<TaskFilters>): Promise<void> {
    filters.value = { ...filters.value, ...changes }
    page.value = 1
    return fetchList()
  }

  function setPage(newPage: number): Promise<void> {
    page.value = Math.min(Math.max(1, Math.trunc(newPage)), pageCount.value)
    return fetchList()
  }

  // Selected task

  const isTaskRequestInFlight = () => taskAbortController !== null

  /** Loads a task and its logs. Returns whether the task exists, so the page can show a 404. */
  async function fetchTask(taskId: number): Promise<TaskLoadResult> {
    taskAbortController?.abort()
    const controller = new AbortController()
    taskAbortController = controller
    const requestNumber = ++taskRequestNumber

    if (selectedTaskId.value !== taskId) {
      selectedTaskId.value = taskId
      selectedTask.value = null
      selectedLogs.value = []
      isSelectedTaskMissing.value = false
      taskErrorMessage.value = null
    }

    try {
      const [task, logs] = await Promise.all([
        readFromApi<Task>(`/tasks/${taskId}`, { signal: controller.signal }),
        readFromApi<TaskLog[]>(`/tasks/${taskId}/logs`, { signal: controller.signal }),
      ])
      if (requestNumber !== taskRequestNumber) {
        return 'found'
      }
      applyTask(task, logs)
      return 'found'
    }
    catch (error) {
      if (requestNumber !== taskRequestNumber) {
        return 'failed'
      }
      // Stop the sibling request too, because the page needs both the task and its logs.
      controller.abort()
      const problem = describeApiError(error)
      if (problem.status === 404) {
        markApiReachable()
        isSelectedTaskMissing.value = true
        selectedTask.value = null
        return 'not-found'
      }
      const message = reportReadError(problem, `Loading task ${taskId}`)
      if (message) {
        taskErrorMessage.value = message
      }
      return 'failed'
    }
    finally {
      if (requestNumber === taskRequestNumber) {
        taskAbortController = null
      }
    }
  }

  function applyTask(task: Task, logs: TaskLog[]): void {
    selectedTask.value = task
    selectedLogs.value = logs
    isSelectedTaskMissing.value = false
    taskErrorMessage.value = null
    lastReadErrorMessage = null
    replaceTaskInList(task)
    markApiReachable()
    announceFinishedTasks([task])
  }

  function replaceTaskInList(task: Task): void {
    const index = tasks.value.findIndex(listed => listed.id === task.id)
    if (index !== -1) {
      tasks.value.splice(index, 1, task)
    }
  }

  /** Forgets the selected task and aborts its request, so no response for it is applied later. */
  function clearSelectedTask(): void {
    taskAbortController?.abort()
    taskAbortController = null
    taskRequestNumber++
    selectedTaskId.value = null
    selectedTask.value = null
    selectedLogs.value = []
    isSelectedTaskMissing.value = false
    taskErrorMessage.value = null
  }

  // Polling

  /**
   * Starts polling the list or one task and returns a handle for stopPolling. Browser only.
   * One timer at a time: starting a new poll stops the previous one. Each tick waits for the
   * previous request to finish (setTimeout chain), and ticks are skipped while the tab is hidden.
   */
  function startPolling(target: PollTarget): number {
    if (!import.meta.client) {
      return 0
    }
    stopPolling()

    const handle = ++lastPollHandle
    activePoll = { handle, target, timer: null, isHalted: false }
    document.addEventListener('visibilitychange', handleVisibilityChange)

    // Data rendered by SSR counts as seen, so tasks active at page load get a completion toast.
    if (target.kind === 'list') {
      announcer.observeTasks(tasks.value)
    }
    else if (selectedTask.value) {
      announcer.observeTasks([selectedTask.value])
    }
    schedulePoll(pollIntervalMs.value)
    return handle
  }

  /** Stops polling. With a handle, stops only if that poll is still the active one. */
  function stopPolling(handle?: number): void {
    if (!activePoll || (handle !== undefined && handle !== activePoll.handle)) {
      return
    }
    const { target } = activePoll
    clearPollTimer()
    activePoll = null
    document.removeEventListener('visibilitychange', handleVisibilityChange)

    // The next page may already have selected another task (Suspense renders it before this
    // page unmounts), so clear only the task this poll was watching.
    if (target.kind === 'task' && selectedTaskId.value === target.taskId) {
      clearSelectedTask()
    }
  }

  function clearPollTimer(): void {
    if (activePoll?.timer) {
      clearTimeout(activePoll.timer)
      activePoll.timer = null
    }
  }

  function schedulePoll(delayMs: number): void {
    if (!activePoll) {
      return
    }
    clearPollTimer()
    if (activePoll.isHalted || document.visibilityState === 'hidden') {
      return
    }
    activePoll.timer = setTimeout(runPollTick, delayMs)
  }

  function isTargetRequestInFlight(target: PollTarget): boolean {
    return target.kind === 'list' ? isListRequestInFlight() : isTaskRequestInFlight()
  }

  async function runPollTick(): Promise<void> {
    const poll = activePoll
    if (!poll) {
      return
    }
    poll.timer = null

    // Skip this tick while another request for the same data (for example a filter change)
    // is still running, so requests never pile up behind a slow API.
    if (!isTargetRequestInFlight(poll.target)) {
      await refreshPollTarget(poll.target)
    }

    if (activePoll === poll && poll.timer === null) {
      schedulePoll(pollIntervalMs.value)
    }
  }

  async function refreshPollTarget(target: PollTarget): Promise<void> {
    if (target.kind === 'list') {
      await fetchList()
      return
    }

    const result = await fetchTask(target.taskId)
    const poll = activePoll
    if (result === 'not-found' && poll?.target === target) {
      showToast({ id: `task-missing-${target.taskId}`, title: 'Task not found', description: `Task ${target.taskId} no longer exists.`, color: 'warning' })
      // Stay registered, so the page's stopPolling still cleans up, but send no more requests.
      poll.isHalted = true
      clearPollTimer()
    }
  }

  function handleVisibilityChange(): void {
    if (!activePoll) {
      return
    }
    if (document.visibilityState === 'hidden') {
      clearPollTimer()
      return
    }
    // Back to visible: one refresh now instead of the ticks missed while hidden. A request
    // still in flight schedules the next tick itself when it finishes.
    if (activePoll.timer === null && !isTargetRequestInFlight(activePoll.target)) {
      schedulePoll(0)
    }
  }

  // Mutations

  /** Creates a task. The same idempotency key must be reused when the same submission is retried. */
  async function createTask(request: TaskCreateRequest, idempotencyKey: string): Promise<CreateTaskResult> {
    try {
      const task = await mutateThroughServer<Task>('/api/tasks', {
        method: 'POST',
        body: request,
        headers: { 'Idempotency-Key': idempotencyKey },
      })
      showToast({ title: 'Task created', description: `“${task.name}” is ${task.status}.`, color: 'success' })
      announcer.observeTasks([task])
      insertCreatedTask(task)
      if (activePoll?.target.kind === 'list') {
        void fetchList()
      }
      return { ok: true, task }
    }
    catch (error) {
      const problem = describeApiError(error)
      if (problem.kind === 'unreachable') {
        markApiUnreachable(problem)
      }
      showToast({ title: 'Task not created', description: problem.message, color: 'error' })
      const isRetryable = problem.kind === 'unreachable' || (problem.status !== null && problem.status >= 500) || problem.status === 429
      return { ok: false, message: problem.message, fieldErrors: problem.fieldErrors, isRetryable }
    }
  }

  /** Shows a new task at the top of the first page at once, before the next list request confirms it. */
  function insertCreatedTask(task: Task): void {
    const matchesFilters = (!filters.value.status || filters.value.status === task.status)
      && (!filters.value.type || filters.value.type === task.type)
      && task.name.toLowerCase().includes(filters.value.query.trim().toLowerCase())
    if (page.value !== 1 || !matchesFilters || tasks.value.some(listed => listed.id === task.id)) {
      return
    }
    tasks.value = [task, ...tasks.value].slice(0, pageSize.value)
    total.value += 1
    counts.value = { ...counts.value, [task.status]: counts.value[task.status] + 1 }
  }

  async function cancelTask(taskId: number): Promise<boolean> {
    try {
      const task = await mutateThroughServer<Task>(`/api/tasks/${taskId}/cancel`, { method: 'POST' })
      announcer.silenceTask(task.id)
      showToast({ title: 'Task cancelled', description: `“${task.name}” will not run again.`, color: 'success' })
      if (selectedTask.value?.id === task.id) {
        selectedTask.value = task
        void fetchTask(task.id)
      }
      replaceTaskInList(task)
      return true
    }
    catch (error) {
      reportMutationError(error, `Cancelling task ${taskId} failed`)
      return false
    }
  }

  async function deleteTask(taskId: number): Promise<boolean> {
    try {
      await mutateThroughServer<void>(`/api/tasks/${taskId}`, { method: 'DELETE' })
      announcer.silenceTask(taskId)
      showToast({ title: 'Task deleted', description: `Task ${taskId} was deleted.`, color: 'success' })
      tasks.value = tasks.value.filter(task => task.id !== taskId)
      return true
    }
    catch (error) {
      reportMutationError(error, `Deleting task ${taskId} failed`)
      return false
    }
  }

  /** Creates a new task with the settings of an existing one. */
  function runTaskAgain(task: Task, idempotencyKey: string): Promise<CreateTaskResult> {
    return createTask({
      name: task.name,
      type: task.type,
      execution_time: task.execution_time,
      failure_rate: task.failure_rate,
    }, idempotencyKey)
  }

  function reportMutationError(error: unknown, title: string): void {
    const problem = describeApiError(error)
    if (problem.kind === 'unreachable') {
      markApiUnreachable(problem)
    }
    showToast({ title, description: problem.message, color: 'error' })
  }

  return {
    tasks,
    total,
    counts,
    filters,
    page,
    pageSize,
    pageCount,
    isListLoading,
    hasLoadedList,
    listErrorMessage,
    selectedTaskId,
    selectedTask,
    selectedLogs,
    isSelectedTaskMissing,
    taskErrorMessage,
    isApiUnreachable,
    unreachableDetail,
    pollIntervalMs,
    fetchList,
    setFilters,
    setPage,
    fetchTask,
    clearSelectedTask,
    startPolling,
    stopPolling,
    createTask,
    cancelTask,
    deleteTask,
    runTaskAgain,
  }
})
