"""Domain errors raised by crud.py and worker.py. Only api/ turns them into HTTP responses."""


class TaskRunnerError(Exception):
    """Base class of every error this service raises on purpose."""


class TaskNotFoundError(TaskRunnerError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class InvalidTransitionError(TaskRunnerError):
    """A status change that the lifecycle does not allow, or that lost a race."""

    def __init__(self, task_id: int, current: str, target: str) -> None:
        super().__init__(
            f"task {task_id} is {current}, so it cannot become {target}"
        )
        self.task_id = task_id
        self.current = current
        self.target = target


class TaskNotDeletableError(TaskRunnerError):
    def __init__(self, task_id: int, current: str) -> None:
        super().__init__(
            f"task {task_id} is {current}; only completed, failed or cancelled tasks can be deleted, "
            "so cancel it first"
        )
        self.task_id = task_id
        self.current = current


class IdempotencyConflictError(TaskRunnerError):
    def __init__(self, key: str, task_id: int) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for task {task_id} with a different body; "
            "send a new key for a new task"
        )
        self.key = key
        self.task_id = task_id


class QueueFullError(TaskRunnerError):
    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(
            f"{pending} tasks are already pending, and the limit is {limit} (MAX_PENDING_TASKS); "
            "retry later"
        )
        self.pending = pending
        self.limit = limit
