import type { Task, TaskCounts, TaskFilters, TaskStatus } from '~/types/tasks'
import { ACTIVE_STATUSES, TASK_STATUSES } from '~/types/tasks'

export const DEFAULT_PAGE_SIZE = 20

export function isActiveStatus(status: TaskStatus): boolean {
  return ACTIVE_STATUSES.includes(status)
}

export function createEmptyCounts(): TaskCounts {
  return Object.fromEntries(TASK_STATUSES.map(status => [status, 0])) as TaskCounts
}

/** Builds the query string parameters of GET /tasks/ for a 1-based page. */
export function buildListQuery(filters: TaskFilters, page: number, pageSize: number): Record<string, string | number> {
  const query: Record<string, string | number> = {
    limit: pageSize,
    offset: (Math.max(page, 1) - 1) * pageSize,
  }

  if (filters.status) {
    query.status = filters.status
  }
  if (filters.type) {
    query.type = filters.type
  }
  const searchText = filters.query.trim()
  if (searchText) {
    query.q = searchText
  }

  return query
}

/**
 * Counts the runs a task has started: `attempts` counts failed runs, so a running or
 * completed task adds its current run.
 */
export function countStartedRuns(task: Task): number {
  const hasCurrentRun = task.status === 'running' || task.status === 'completed'
  return Math.min(task.attempts + (hasCurrentRun ? 1 : 0), task.max_attempts)
}

export function formatRuns(task: Task): string {
  return `${countStartedRuns(task)} / ${task.max_attempts}`
}

/** Formats seconds as "2.5 s", "4 min 10 s" or "1 h 2 min". */
export function formatDuration(seconds: number): string {
  if (seconds < 60) {
    return `${Number(seconds.toFixed(2))} s`
  }
  const wholeSeconds = Math.round(seconds)
  const hours = Math.floor(wholeSeconds / 3600)
  const minutes = Math.floor((wholeSeconds % 3600) / 60)
  const restSeconds = wholeSeconds % 60
  if (hours > 0) {
    return minutes > 0 ? `${hours} h ${minutes} min` : `${hours} h`
  }
  return restSeconds > 0 ? `${minutes} min ${restSeconds} s` : `${minutes} min`
}

/**
 * Returns the progress of the current run in percent (0..100), from started_at and
 * execution_time, or null when the task is not running.
 */
export function computeRunProgress(task: Task, nowMs: number): number | null {
  if (task.status !== 'running' || !task.started_at) {
    return null
  }
  const durationMs = task.execution_time * 1000
  if (durationMs <= 0) {
    return 100
  }
  const elapsedMs = nowMs - Date.parse(task.started_at)
  return Math.min(100, Math.max(0, (elapsedMs / durationMs) * 100))
}

export const STATUS_COLORS: Record<TaskStatus, 'neutral' | 'info' | 'success' | 'error' | 'warning'> = {
  pending: 'neutral',
  running: 'info',
  completed: 'success',
  failed: 'error',
  cancelled: 'warning',
}

export const STATUS_LABELS: Record<TaskStatus, string> = {
  pending: 'Pending',
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Cancelled',
}

/** Returns an RFC 4122 version 4 UUID, also on plain-HTTP origins where crypto.randomUUID is missing. */
export function createIdempotencyKey(): string {
  if (typeof crypto.randomUUID === 'function') {
    return crypto.randomUUID()
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  bytes[6] = (bytes[6]! & 0x0f) | 0x40
  bytes[8] = (bytes[8]! & 0x3f) | 0x80
  const hex = Array.from(bytes, byte => byte.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}
