import type { Task } from '~/types/tasks'
import { isActiveStatus } from '~/utils/tasks'

/**
 * Decides which finished tasks deserve a toast, so each event is announced once per tab.
 *
 * A task is announced only when this tab saw it pending or running before and saw it
 * finish, so tasks that were already finished when the page loaded stay quiet, and retries
 * (running -> pending -> running) announce nothing until the final status.
 */
export function createTaskAnnouncer() {
  const watchedTaskIds = new Set<number>()
  const announcedTaskIds = new Set<number>()

  /** Records the tasks and returns those that just reached a final status. */
  function observeTasks(tasks: readonly Task[]): Task[] {
    const finishedTasks: Task[] = []

    for (const task of tasks) {
      if (isActiveStatus(task.status)) {
        watchedTaskIds.add(task.id)
        continue
      }
      if (watchedTaskIds.has(task.id) && !announcedTaskIds.has(task.id)) {
        announcedTaskIds.add(task.id)
        finishedTasks.push(task)
      }
    }

    return finishedTasks
  }

  /** Marks a task as announced, for events that the user's own action already reported. */
  function silenceTask(taskId: number): void {
    announcedTaskIds.add(taskId)
  }

  return { observeTasks, silenceTask }
}

export type TaskAnnouncer = ReturnType<typeof createTaskAnnouncer>
