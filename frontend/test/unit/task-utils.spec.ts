import { describe, expect, it } from 'vitest'
import type { Task, TaskLog } from '~/types/tasks'
import { buildTaskTimeline } from '~/utils/task-timeline'
import { computeRunProgress, formatDuration, formatRuns } from '~/utils/tasks'

const TASK: Task = {
  id: 1,
  name: 'Report',
  type: 'processing',
  execution_time: 4,
  failure_rate: 1,
  status: 'running',
  attempts: 1,
  max_attempts: 3,
  run_at: '2026-12-04T20:00:00Z',
  last_error: null,
  created_at: '2026-12-04T20:00:00Z',
  updated_at: '2026-12-04T20:00:00Z',
  started_at: '2026-12-04T20:00:10Z',
  finished_at: null,
}

function buildLog(id: number, attempt: number, message: string, level: TaskLog['level'] = 'INFO'): TaskLog {
  return { id, task_id: 1, attempt, level, message, created_at: `2026-12-04T20:00:0${id}Z` }
}

describe('formatRuns', () => {
  it('counts the current run of a running task', () => {
    expect(formatRuns(TASK)).toBe('2 / 3')
  })

  it('shows three of three for a task failed for good', () => {
    expect(formatRuns({ ...TASK, status: 'failed', attempts: 3 })).toBe('3 / 3')
  })

  it('shows zero runs for a new task', () => {
    expect(formatRuns({ ...TASK, status: 'pending', attempts: 0 })).toBe('0 / 3')
  })
})

describe('computeRunProgress', () => {
  it('is the elapsed share of the execution time', () => {
    expect(computeRunProgress(TASK, Date.parse('2026-12-04T20:00:11Z'))).toBe(25)
  })

  it('stays within 0 and 100', () => {
    expect(computeRunProgress(TASK, Date.parse('2026-12-04T20:00:00Z'))).toBe(0)
    expect(computeRunProgress(TASK, Date.parse('2026-12-04T21:00:00Z'))).toBe(100)
  })

  it('is null unless the task is running', () => {
    expect(computeRunProgress({ ...TASK, status: 'pending' }, Date.now())).toBeNull()
  })
})

describe('formatDuration', () => {
  it.each([
    [2.5, '2.5 s'],
    [0, '0 s'],
    [90, '1 min 30 s'],
    [3600, '1 h'],
    [3720, '1 h 2 min'],
  ])('formats %s seconds as %s', (seconds, expected) => {
    expect(formatDuration(seconds)).toBe(expected)
  })
})

describe('buildTaskTimeline', () => {
  it('lists creation, runs, retries and the final failure', () => {
    const logs = [
      buildLog(1, 0, 'task created'),
      buildLog(2, 1, 'run 1 started'),
      buildLog(3, 1, 'run 1 slept 2.00 s'),
      buildLog(4, 1, 'run 1 failed: simulated failure', 'WARNING'),
      buildLog(5, 1, 'retry scheduled at 2026-12-04T20:00:06.000Z (in 0.2 s)', 'WARNING'),
      buildLog(6, 3, 'failed for good after 3 runs', 'ERROR'),
    ]

    const titles = buildTaskTimeline(TASK, logs).map(entry => entry.title)

    expect(titles).toEqual(['Created', 'Run 1 started', 'Run 1 failed', 'Retry scheduled', 'Failed'])
  })

  it('starts with the creation time when there are no logs yet', () => {
    const entries = buildTaskTimeline(TASK, [])

    expect(entries).toHaveLength(1)
    expect(entries[0]!.date).toBe(TASK.created_at)
  })
})
