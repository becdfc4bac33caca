import type { Task, TaskLog } from '~/types/tasks'

export interface TaskTimelineEntry {
  /** Unique within one timeline. */
  value: string
  title: string
  description?: string
  /** ISO 8601 timestamp. */
  date: string
  icon: string
}

const RUN_STARTED = /^run (\d+) started$/
const RUN_FAILED = /^run (\d+) failed: (.*)$/s
const RUN_RETURNED = /^run (\d+) returned to the queue: (.*)$/s
const RUN_SLEPT = /^run \d+ slept /
const RETRY_SCHEDULED = /^retry scheduled/
const FAILED_FOR_GOOD = /^failed for good/

/**
 * Builds the lifecycle of a task (created, each run, retries, finish) from its logs.
 * Log lines that only add detail to a step ("run 1 slept 2.00 s") stay in the log list.
 */
export function buildTaskTimeline(task: Task, logs: readonly TaskLog[]): TaskTimelineEntry[] {
  const entries: TaskTimelineEntry[] = []
  const hasCreatedLog = logs.some(log => log.message === 'task created')

  if (!hasCreatedLog) {
    entries.push({ value: 'created', title: 'Created', date: task.created_at, icon: 'i-lucide-circle-plus' })
  }

  for (const log of logs) {
    const entry = describeLog(log)
    if (entry) {
      entries.push({ ...entry, value: `log-${log.id}`, date: log.created_at })
    }
  }

  return entries
}

function describeLog(log: TaskLog): Omit<TaskTimelineEntry, 'value' | 'date'> | null {
  const message = log.message
  let match: RegExpMatchArray | null

  if (message === 'task created') {
    return { title: 'Created', icon: 'i-lucide-circle-plus' }
  }
  if ((match = message.match(RUN_STARTED))) {
    return { title: `Run ${match[1]} started`, icon: 'i-lucide-play' }
  }
  if ((match = message.match(RUN_FAILED))) {
    return { title: `Run ${match[1]} failed`, description: match[2], icon: 'i-lucide-circle-x' }
  }
  if ((match = message.match(RUN_RETURNED))) {
    return { title: `Run ${match[1]} returned to the queue`, description: match[2], icon: 'i-lucide-undo-2' }
  }
  if (RETRY_SCHEDULED.test(message)) {
    return { title: 'Retry scheduled', description: message, icon: 'i-lucide-rotate-cw' }
  }
  if (FAILED_FOR_GOOD.test(message)) {
    return { title: 'Failed', description: message, icon: 'i-lucide-octagon-x' }
  }
  if (message === 'completed') {
    return { title: 'Completed', icon: 'i-lucide-circle-check' }
  }
  if (message === 'cancelled') {
    return { title: 'Cancelled', icon: 'i-lucide-ban' }
  }
  if (RUN_SLEPT.test(message)) {
    return null
  }
  return { title: message, icon: log.level === 'INFO' ? 'i-lucide-info' : 'i-lucide-triangle-alert' }
}
