export const TASK_STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'] as const
export type TaskStatus = (typeof TASK_STATUSES)[number]

export const TASK_TYPES = ['notification', 'processing'] as const
export type TaskType = (typeof TASK_TYPES)[number]

export const ACTIVE_STATUSES: readonly TaskStatus[] = ['pending', 'running']

/** A task as the backend returns it. Timestamps are ISO 8601 strings with an offset. */
export interface Task {
  id: number
  name: string
  type: TaskType
  /** Seconds one run sleeps. */
  execution_time: number
  /** Chance from 0 to 1 that one run fails. */
  failure_rate: number
  status: TaskStatus
  /** Failed runs so far. */
  attempts: number
  /** Maximum number of runs. */
  max_attempts: number
  run_at: string | null
  last_error: string | null
  created_at: string
  updated_at: string
  started_at: string | null
  finished_at: string | null
}

export type TaskCounts = Record<TaskStatus, number>

export interface TaskListResponse {
  items: Task[]
  total: number
  limit: number
  offset: number
  counts: TaskCounts
}

export interface TaskLog {
  id: number
  task_id: number
  attempt: number
  level: 'INFO' | 'WARNING' | 'ERROR'
  message: string
  created_at: string
}

/** Body of POST /tasks/. */
export interface TaskCreateRequest {
  name: string
  type: TaskType
  execution_time: number
  failure_rate: number
}

export interface TaskFilters {
  status: TaskStatus | null
  type: TaskType | null
  /** Case-insensitive substring of the task name. */
  query: string
}

/** A validation message for one field of the create form. */
export interface FieldError {
  name: string
  message: string
}
