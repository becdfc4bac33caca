"""Every SQL statement and every status change of a task.

Each status change is one conditional UPDATE that names the status it expects, so two
workers, or a worker and an API call, racing for the same task cannot both win. The
database trigger from the first migration checks the same table of transitions again.
"""

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.exceptions import (
    IdempotencyConflictError,
    InvalidTransitionError,
    QueueFullError,
    TaskNotDeletableError,
    TaskNotFoundError,
)
from app.models import TaskStatus

logger = logging.getLogger(__name__)

PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED

# The whole lifecycle. running -> pending is a retry (or a release at shutdown).
ALLOWED_TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (PENDING, RUNNING),
        (RUNNING, COMPLETED),
        (RUNNING, FAILED),
        (RUNNING, PENDING),
        (PENDING, CANCELLED),
        (RUNNING, CANCELLED),
    }
)

TASK_COLUMNS = (
    "id, name, type, execution_time, failure_rate, status, attempts, max_attempts, run_at, "
    "last_error, created_at, updated_at, started_at, finished_at"
)
TASK_COLUMN_NAMES = tuple(TASK_COLUMNS.split(", "))

# Filtered counts stop here; the API then reports total_is_exact = false.
COUNT_LIMIT = 10_000


def check_transition(task_id: int, current: str, target: str) -> None:
    """Raise InvalidTransitionError unless the lifecycle allows current -> target."""
    if (current, target) not in ALLOWED_TRANSITIONS:
        raise InvalidTransitionError(task_id, current, target)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    statuses: Sequence[str] = ()
    type: str | None = None
    name_contains: str | None = None
    # Keyset cursor: only tasks with a smaller id, so a walk never repeats a row.
    before_id: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """One run that a worker claimed: the lease token proves it still owns the task."""

    task_id: int
    name: str
    type: str
    execution_time: float
    failure_rate: float
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class RunFailure:
    run: ClaimedRun
    error: str
    retry_delay_seconds: float
    slept_seconds: float


@dataclass(frozen=True, slots=True)
class RunSuccess:
    run: ClaimedRun
    slept_seconds: float


# --- creation and reads -------------------------------------------------------------------


async def create_task(
    conn: AsyncConnection,
    *,
    name: str,
    type: str,
    execution_time: float,
    failure_rate: float,
    max_attempts: int,
    max_pending: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    claim_for: uuid.UUID | None = None,
    lease_seconds: float = 0,
) -> tuple[dict[str, Any], bool, list[ClaimedRun]]:
    """Insert a pending task with its first log line; return it, whether it is new and its claim.

    With claim_for, the task is committed and then the oldest due task (usually this one)
    is claimed for that worker in a second transaction of the same call. That needs conn
    in autocommit mode. Without it the task is only inserted, in the caller's transaction.
    With an idempotency key already stored, return the earlier task instead, or raise
    IdempotencyConflictError when that task was created from another body.
    """
    if idempotency_key is not None:
        existing = await _find_by_idempotency_key(conn, idempotency_key)
        if existing is not None:
            return _check_replay(existing, idempotency_key, request_hash), False, []

    result = await conn.execute(
        text(
            """
            CALL create_task(:name, :type, :execution_time, :failure_rate, :max_attempts,
                             :idempotency_key, :request_hash, :max_pending,
                             :claim_for, :claim_limit, :lease_seconds, NULL, NULL, NULL)
            """
        ),
        {
            "name": name,
            "type": type,
            "execution_time": execution_time,
            "failure_rate": failure_rate,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "max_pending": max_pending,
            "claim_for": claim_for,
            "claim_limit": 1 if claim_for is not None else 0,
            "lease_seconds": float(lease_seconds),
        },
    )
    pending_before, row, claimed = result.one()
    if row is None or row["id"] is None:
        if pending_before >= max_pending:
            raise QueueFullError(int(pending_before), max_pending)
        # Another request with the same key committed between our lookup and our insert.
        existing = await _find_by_idempotency_key(conn, idempotency_key or "")
        if existing is None:
            raise RuntimeError(f"insert of idempotency key {idempotency_key!r} conflicted, yet no row has it")
        return _check_replay(existing, idempotency_key or "", request_hash), False, []

    task = {column: row[column] for column in TASK_COLUMN_NAMES}
    logger.info(
        "task created",
        extra={"event": "created", "task_id": task["id"], "attempt": 0, "status": task["status"]},
    )
    return task, True, [claimed_run(claimed_row) for claimed_row in claimed or ()]


async def _find_by_idempotency_key(conn: AsyncConnection, key: str) -> dict[str, Any] | None:
    result = await conn.execute(
        text(f"SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE idempotency_key = :key"),
        {"key": key},
    )
    row = result.mappings().one_or_none()
    return dict(row) if row is not None else None


def _check_replay(existing: dict[str, Any], key: str, request_hash: str | None) -> dict[str, Any]:
    stored_hash = existing.pop("request_hash")
    if stored_hash != request_hash:
        raise IdempotencyConflictError(key, existing["id"])
    return existing


async def get_task(conn: AsyncConnection, task_id: int) -> dict[str, Any]:
    result = await conn.execute(
        text(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"), {"id": task_id}
    )
    row = result.mappings().one_or_none()
    if row is None:
        raise TaskNotFoundError(task_id)
    return dict(row)


def _filter_clause(task_filter: TaskFilter) -> tuple[str, dict[str, Any]]:
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if task_filter.statuses:
        conditions.append("status = ANY(CAST(:statuses AS text[]))")
        params["statuses"] = list(task_filter.statuses)
    if task_filter.type is not None:
        conditions.append("type = :type")
        params["type"] = task_filter.type
    if task_filter.name_contains:
        # Escape LIKE wildcards so that a search for "50%" finds that text literally.
        escaped = (
            task_filter.name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        )
        conditions.append("name ILIKE :pattern")
        params["pattern"] = f"%{escaped}%"
    if task_filter.before_id is not None:
        conditions.append("id < :before_id")
        params["before_id"] = task_filter.before_id
    where = " AND ".join(conditions) if conditions else "TRUE"
    return where, params


async def list_tasks(
    conn: AsyncConnection, task_filter: TaskFilter, *, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Return one page, newest first.

    Ids grow with every insert, so id order is creation order without ties, even for rows
    that one transaction inserted with the same created_at.
    """
    where, params = _filter_clause(task_filter)
    result = await conn.execute(
        text(f"SELECT {TASK_COLUMNS} FROM tasks WHERE {where} ORDER BY id DESC LIMIT :limit OFFSET :offset"),
        {**params, "limit": limit, "offset": offset},
    )
    return [dict(row) for row in result.mappings()]


async def count_tasks(
    conn: AsyncConnection, task_filter: TaskFilter, counts: dict[str, int]
) -> tuple[int, bool]:
    """Count the tasks that match; return the count and whether it is exact.

    Status-only filters are summed from counts (see count_tasks_by_status). Type, name and
    cursor filters count at most COUNT_LIMIT + 1 rows, so a broad search on a large table stays fast.
    """
    if task_filter.type is None and not task_filter.name_contains and task_filter.before_id is None:
        matching_statuses = task_filter.statuses or list(counts)
        return sum(counts.get(status, 0) for status in matching_statuses), True

    where, params = _filter_clause(task_filter)
    result = await conn.execute(
        text(f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {where} LIMIT :cap) AS matched"),
        {**params, "cap": COUNT_LIMIT + 1},
    )
    matched = int(result.scalar_one())
    return min(matched, COUNT_LIMIT), matched <= COUNT_LIMIT


async def count_tasks_by_status(conn: AsyncConnection) -> dict[str, int]:
    result = await conn.execute(
        text("SELECT status, sum(count) FROM task_status_counts GROUP BY status")
    )
    counts = {status.value: 0 for status in TaskStatus}
    for status, count in result:
        counts[status] = int(count)
    return counts


async def list_task_logs(conn: AsyncConnection, task_id: int) -> list[dict[str, Any]]:
    result = await conn.execute(
        text(
            "SELECT id, task_id, attempt, level, message, created_at FROM task_logs "
            "WHERE task_id = :id ORDER BY id"
        ),
        {"id": task_id},
    )
    logs = [dict(row) for row in result.mappings()]
    if not logs:
        # Every task has its "task created" line, so no lines means no task.
        await get_task(conn, task_id)
    return logs


# --- single-task transitions --------------------------------------------------------------


async def transition_task(
    conn: AsyncConnection,
    task_id: int,
    expected: TaskStatus,
    target: TaskStatus,
    *,
    message: str,
    level: str = "INFO",
) -> dict[str, Any]:
    """Move one task from expected to target, or raise if the lifecycle or a race forbids it.

    Running -> pending through this function counts a failed attempt, as a retry does.
    """
    check_transition(task_id, expected, target)
    assignments = ["status = :target", "updated_at = now()"]
    if target in (COMPLETED, FAILED, CANCELLED):
        assignments.append("finished_at = now()")
    if target == RUNNING:
        assignments += [
            "started_at = now()",
            "lease_token = gen_random_uuid()",
            "lease_expires_at = now() + interval '30 seconds'",
        ]
    else:
        assignments += ["lease_owner = NULL", "lease_token = NULL", "lease_expires_at = NULL"]
    if expected == RUNNING and target in (PENDING, FAILED):
        assignments.append("attempts = attempts + 1")
    guard = "attempts + 1 < max_attempts" if (expected, target) == (RUNNING, PENDING) else "TRUE"

    result = await conn.execute(
        text(
            f"""
            WITH moved AS (
                UPDATE tasks SET {", ".join(assignments)}
                WHERE id = :id AND status = :expected AND {guard}
                RETURNING *
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT id, attempts, :level, :message FROM moved
            )
            SELECT {TASK_COLUMNS} FROM moved
            """
        ),
        {"id": task_id, "expected": expected, "target": target, "message": message, "level": level},
    )
    row = result.mappings().one_or_none()
    if row is None:
        current = await get_task(conn, task_id)
        raise InvalidTransitionError(task_id, current["status"], target)
    return dict(row)


async def cancel_task(conn: AsyncConnection, task_id: int) -> dict[str, Any]:
    """Cancel a pending or running task; a running one's late result is discarded by its lease check."""
    result = await conn.execute(
        text(
            f"""
            WITH cancelled AS (
                UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now(),
                                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                WHERE id = :id AND status IN ('pending', 'running')
                RETURNING *
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT id, attempts, 'INFO', 'cancelled' FROM cancelled
            )
            SELECT {TASK_COLUMNS} FROM cancelled
            """
        ),
        {"id": task_id},
    )
    row = result.mappings().one_or_none()
    if row is None:
        current = await get_task(conn, task_id)
        raise InvalidTransitionError(task_id, current["status"], CANCELLED)

    await conn.execute(text("SELECT pg_notify('task_cancelled', :id)"), {"id": str(task_id)})
    logger.info(
        "task cancelled",
        extra={"event": "cancelled", "task_id": task_id, "attempt": row["attempts"], "status": "cancelled"},
    )
    return dict(row)


async def delete_task(conn: AsyncConnection, task_id: int) -> None:
    result = await conn.execute(
        text(
            "DELETE FROM tasks WHERE id = :id AND status IN ('completed', 'failed', 'cancelled') "
            "RETURNING id"
        ),
        {"id": task_id},
    )
    if result.first() is None:
        current = await get_task(conn, task_id)
        raise TaskNotDeletableError(task_id, current["status"])
    logger.info("task deleted", extra={"event": "deleted", "task_id": task_id})


# --- worker: claims, results, leases ------------------------------------------------------


# Sent through asyncpg directly, because SQLAlchemy's processing of a statement adds CPU time
# between a task's commit and its claim. claim_due_tasks() is created by migration 0002.
CLAIM_STATEMENT = """
    SELECT id, name, type, execution_time, failure_rate, attempts, max_attempts, lease_token
    FROM claim_due_tasks($1, $2, $3)
"""


async def claim_tasks(
    driver: asyncpg.Connection, *, worker_id: uuid.UUID, limit: int, lease_seconds: float
) -> list[ClaimedRun]:
    """Move up to limit due pending tasks to running under a fresh lease, oldest first.

    driver is the asyncpg connection under a SQLAlchemy one. The claim is one statement and
    commits on its own, so call it outside any open transaction. An empty result can also
    mean that another worker has locked the due rows right now, so callers poll again.
    """
    rows = await driver.fetch(CLAIM_STATEMENT, worker_id, limit, float(lease_seconds))
    return [claimed_run(row) for row in rows]


def claimed_run(row: Mapping[str, Any]) -> ClaimedRun:
    """Build the run of a task row that claim_due_tasks() has just moved to running."""
    return ClaimedRun(
        task_id=row["id"],
        name=row["name"],
        type=row["type"],
        execution_time=row["execution_time"],
        failure_rate=row["failure_rate"],
        attempt=row["attempts"] + 1,
        max_attempts=row["max_attempts"],
        lease_token=row["lease_token"],
    )


async def complete_runs(conn: AsyncConnection, successes: Sequence[RunSuccess]) -> set[int]:
    """Mark the runs completed whose lease is still theirs; return the ids that were written."""
    if not successes:
        return set()
    result = await conn.execute(
        text(
            """
            WITH input AS (
                SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]),
                                     CAST(:slept AS float8[])) AS u(id, token, slept)
            ), done AS (
                UPDATE tasks t
                SET status = 'completed', finished_at = now(), updated_at = now(), last_error = NULL,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                FROM input u
                WHERE t.id = u.id AND t.status = 'running' AND t.lease_token = u.token
                RETURNING t.id, t.attempts, u.slept
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT done.id, done.attempts + 1, 'INFO', line.message
                FROM done CROSS JOIN LATERAL (VALUES
                    (1, 'run ' || (done.attempts + 1) || ' slept ' || to_char(done.slept, 'FM999999990.00') || ' s'),
                    (2, 'completed')
                ) AS line(position, message)
                ORDER BY done.id, line.position
            )
            SELECT id FROM done
            """
        ),
        {
            "ids": [s.run.task_id for s in successes],
            "tokens": [s.run.lease_token for s in successes],
            "slept": [s.slept_seconds for s in successes],
        },
    )
    return {row.id for row in result}


async def fail_runs(conn: AsyncConnection, failures: Sequence[RunFailure]) -> dict[int, str]:
    """Record failed runs: back to pending with a delay while runs remain, else failed for good.

    Return the new status of every task whose lease was still held.
    """
    if not failures:
        return {}
    result = await conn.execute(
        text(
            """
            WITH input AS (
                SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]),
                                     CAST(:errors AS text[]), CAST(:delays AS float8[]),
                                     CAST(:slept AS float8[]))
                    AS u(id, token, error, delay, slept)
            ), moved AS (
                UPDATE tasks t
                SET attempts = t.attempts + 1,
                    status = CASE WHEN t.attempts + 1 < t.max_attempts THEN 'pending' ELSE 'failed' END,
                    run_at = CASE WHEN t.attempts + 1 < t.max_attempts
                                  THEN now() + make_interval(secs => u.delay) ELSE t.run_at END,
                    finished_at = CASE WHEN t.attempts + 1 < t.max_attempts THEN NULL ELSE now() END,
                    last_error = u.error, updated_at = now(),
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                FROM input u
                WHERE t.id = u.id AND t.status = 'running' AND t.lease_token = u.token
                RETURNING t.id, t.attempts, t.max_attempts, t.status, t.run_at, u.error, u.delay, u.slept
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT moved.id, moved.attempts, line.level, line.message
                FROM moved CROSS JOIN LATERAL (VALUES
                    (1, 'INFO', 'run ' || moved.attempts || ' slept ' || to_char(moved.slept, 'FM999999990.00') || ' s'),
                    (2, 'WARNING', 'run ' || moved.attempts || ' failed: ' || moved.error),
                    (3, CASE WHEN moved.status = 'pending' THEN 'WARNING' ELSE 'ERROR' END,
                        CASE WHEN moved.status = 'pending'
                             THEN 'retry scheduled at '
                                  || to_char(moved.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                                  || ' (in ' || to_char(moved.delay, 'FM999999990.0') || ' s)'
                             ELSE 'failed for good after ' || moved.attempts || ' runs' END)
                ) AS line(position, level, message)
                ORDER BY moved.id, line.position
            )
            SELECT id, status FROM moved
            """
        ),
        {
            "ids": [f.run.task_id for f in failures],
            "tokens": [f.run.lease_token for f in failures],
            "errors": [f.error for f in failures],
            "delays": [f.retry_delay_seconds for f in failures],
            "slept": [f.slept_seconds for f in failures],
        },
    )
    return {row.id: row.status for row in result}


async def log_discarded_results(conn: AsyncConnection, runs: Sequence[ClaimedRun], reason: str) -> None:
    """Note in each task's log that a run's result came after its lease was gone."""
    if not runs:
        return
    await conn.execute(
        text(
            """
            INSERT INTO task_logs (task_id, attempt, level, message)
            SELECT u.id, u.attempt, 'WARNING',
                   'result of run ' || u.attempt || ' discarded: ' || CAST(:reason AS text)
            FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS u(id, attempt)
            WHERE EXISTS (SELECT 1 FROM tasks WHERE tasks.id = u.id)
            """
        ),
        {"ids": [r.task_id for r in runs], "attempts": [r.attempt for r in runs], "reason": reason},
    )


async def release_runs(conn: AsyncConnection, runs: Sequence[ClaimedRun], reason: str) -> set[int]:
    """Return unfinished runs to pending without counting a failure (a graceful stop)."""
    if not runs:
        return set()
    result = await conn.execute(
        text(
            """
            WITH input AS (
                SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[])) AS u(id, token)
            ), released AS (
                UPDATE tasks t
                SET status = 'pending', run_at = now(), started_at = NULL, updated_at = now(),
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                FROM input u
                WHERE t.id = u.id AND t.status = 'running' AND t.lease_token = u.token
                RETURNING t.id, t.attempts
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT id, attempts + 1, 'WARNING',
                       'run ' || (attempts + 1) || ' returned to the queue: ' || CAST(:reason AS text)
                FROM released
            )
            SELECT id FROM released
            """
        ),
        {
            "ids": [r.task_id for r in runs],
            "tokens": [r.lease_token for r in runs],
            "reason": reason,
        },
    )
    return {row.id for row in result}


async def renew_leases(
    conn: AsyncConnection, *, worker_id: uuid.UUID, tokens: Sequence[uuid.UUID], lease_seconds: float
) -> set[uuid.UUID]:
    """Extend the leases this worker still holds; return the tokens that are still valid."""
    if not tokens:
        return set()
    result = await conn.execute(
        text(
            """
            UPDATE tasks
            SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
            WHERE lease_token = ANY(CAST(:tokens AS uuid[])) AND status = 'running'
              AND lease_owner = :worker_id
            RETURNING lease_token
            """
        ),
        {"tokens": list(tokens), "worker_id": worker_id, "lease_seconds": lease_seconds},
    )
    return {row.lease_token for row in result}


async def recover_lost_runs(conn: AsyncConnection, *, retry_delay_seconds: float) -> list[dict[str, Any]]:
    """Take back running tasks whose lease expired: their worker died or hung.

    The lost run counts as a failed attempt, so a task that keeps killing its worker still
    ends failed after max_attempts runs instead of looping forever.
    """
    result = await conn.execute(
        text(
            """
            WITH expired AS (
                SELECT id FROM tasks
                WHERE status = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at
                LIMIT 1000
                FOR UPDATE SKIP LOCKED
            ), moved AS (
                UPDATE tasks t
                SET attempts = t.attempts + 1,
                    status = CASE WHEN t.attempts + 1 < t.max_attempts THEN 'pending' ELSE 'failed' END,
                    run_at = now() + make_interval(secs => :delay),
                    finished_at = CASE WHEN t.attempts + 1 < t.max_attempts THEN NULL ELSE now() END,
                    last_error = 'worker lost: its lease expired before the run finished',
                    updated_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                FROM expired e WHERE t.id = e.id
                RETURNING t.id, t.attempts, t.status
            ), logged AS (
                INSERT INTO task_logs (task_id, attempt, level, message)
                SELECT moved.id, moved.attempts, line.level, line.message
                FROM moved CROSS JOIN LATERAL (VALUES
                    (1, 'WARNING', 'run ' || moved.attempts || ' failed: worker lost (lease expired)'),
                    (2, CASE WHEN moved.status = 'pending' THEN 'WARNING' ELSE 'ERROR' END,
                        CASE WHEN moved.status = 'pending' THEN 'retry scheduled after the lost run'
                             ELSE 'failed for good after ' || moved.attempts || ' runs' END)
                ) AS line(position, level, message)
                ORDER BY moved.id, line.position
            )
            SELECT id, attempts, status FROM moved
            """
        ),
        {"delay": retry_delay_seconds},
    )
    return [dict(row) for row in result.mappings()]


# --- worker registry ----------------------------------------------------------------------


async def record_worker_heartbeat(
    conn: AsyncConnection, *, worker_id: uuid.UUID, hostname: str, pid: int
) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO workers (id, hostname, pid) VALUES (:id, :hostname, :pid)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
            """
        ),
        {"id": worker_id, "hostname": hostname, "pid": pid},
    )


async def remove_worker(conn: AsyncConnection, worker_id: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM workers WHERE id = :id"), {"id": worker_id})


async def prune_workers(conn: AsyncConnection, *, older_than_seconds: float) -> None:
    await conn.execute(
        text("DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => :age)"),
        {"age": older_than_seconds},
    )


async def seconds_since_last_heartbeat(conn: AsyncConnection) -> float | None:
    result = await conn.execute(
        text("SELECT extract(epoch FROM now() - max(heartbeat_at)) FROM workers")
    )
    value = result.scalar_one_or_none()
    return float(value) if value is not None else None
