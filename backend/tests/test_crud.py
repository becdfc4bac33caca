"""Lifecycle rules in crud.py and in the database trigger."""

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import crud
from app.exceptions import InvalidTransitionError, TaskNotDeletableError, TaskNotFoundError
from app.models import TaskStatus

STATUSES = list(TaskStatus)
ALLOWED = sorted(crud.ALLOWED_TRANSITIONS)
REFUSED = sorted(
    (current, target)
    for current, target in itertools.product(STATUSES, STATUSES)
    if current != target and (current, target) not in crud.ALLOWED_TRANSITIONS
)


async def insert_task(engine: AsyncEngine, status: TaskStatus = TaskStatus.PENDING, attempts: int = 0) -> int:
    """Insert a task directly in the given status, the way earlier transitions would leave it."""
    lease = "gen_random_uuid(), now() + interval '30 seconds'" if status == TaskStatus.RUNNING else "NULL, NULL"
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "INSERT INTO tasks (name, type, execution_time, max_attempts, status, attempts, "
                f"lease_token, lease_expires_at) VALUES ('t', 'notification', 1, 3, :status, :attempts, {lease}) "
                "RETURNING id"
            ),
            {"status": status, "attempts": attempts},
        )
        return result.scalar_one()


async def read_status(engine: AsyncEngine, task_id: int) -> str:
    async with engine.connect() as conn:
        return (await crud.get_task(conn, task_id))["status"]


def test_transition_table_is_the_documented_lifecycle() -> None:
    assert crud.ALLOWED_TRANSITIONS == {
        ("pending", "running"),
        ("running", "completed"),
        ("running", "failed"),
        ("running", "pending"),
        ("pending", "cancelled"),
        ("running", "cancelled"),
    }


@pytest.mark.parametrize(("current", "target"), ALLOWED, ids=[f"{a}-to-{b}" for a, b in ALLOWED])
async def test_allowed_transition_is_applied(engine: AsyncEngine, current: TaskStatus, target: TaskStatus) -> None:
    task_id = await insert_task(engine, current)

    async with engine.begin() as conn:
        task = await crud.transition_task(conn, task_id, current, target, message=f"moved to {target}")

    assert task["status"] == target
    assert await read_status(engine, task_id) == target


@pytest.mark.parametrize(("current", "target"), REFUSED, ids=[f"{a}-to-{b}" for a, b in REFUSED])
async def test_refused_transition_raises_and_changes_nothing(
    engine: AsyncEngine, current: TaskStatus, target: TaskStatus
) -> None:
    task_id = await insert_task(engine, current)

    with pytest.raises(InvalidTransitionError) as raised:
        async with engine.begin() as conn:
            await crud.transition_task(conn, task_id, current, target, message="never written")

    assert raised.value.task_id == task_id
    assert raised.value.current == current
    assert await read_status(engine, task_id) == current


async def test_transition_from_stale_status_loses_the_race(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.COMPLETED)

    with pytest.raises(InvalidTransitionError) as raised:
        async with engine.begin() as conn:
            await crud.transition_task(conn, task_id, TaskStatus.RUNNING, TaskStatus.FAILED, message="late")

    assert raised.value.current == "completed"


async def test_retry_transition_refused_when_no_runs_remain(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.RUNNING, attempts=2)

    with pytest.raises(InvalidTransitionError):
        async with engine.begin() as conn:
            await crud.transition_task(conn, task_id, TaskStatus.RUNNING, TaskStatus.PENDING, message="retry")

    assert await read_status(engine, task_id) == "running"


async def test_retry_transition_counts_the_failed_run(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.RUNNING, attempts=1)

    async with engine.begin() as conn:
        task = await crud.transition_task(conn, task_id, TaskStatus.RUNNING, TaskStatus.PENDING, message="retry")

    assert task["attempts"] == 2
    assert task["status"] == "pending"


async def test_transition_of_unknown_task_raises_not_found(engine: AsyncEngine) -> None:
    with pytest.raises(TaskNotFoundError):
        async with engine.begin() as conn:
            await crud.transition_task(conn, 999, TaskStatus.PENDING, TaskStatus.RUNNING, message="x")


@pytest.mark.parametrize(("current", "target"), REFUSED, ids=[f"{a}-to-{b}" for a, b in REFUSED])
async def test_database_trigger_rejects_handwritten_invalid_update(
    engine: AsyncEngine, current: TaskStatus, target: TaskStatus
) -> None:
    task_id = await insert_task(engine, current)
    lease = (
        ", lease_token = gen_random_uuid(), lease_expires_at = now()"
        if target == TaskStatus.RUNNING
        else ", lease_token = NULL, lease_expires_at = NULL"
    )

    with pytest.raises(DBAPIError) as raised:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE tasks SET status = :target {lease} WHERE id = :id"), {"target": target, "id": task_id})

    assert "cannot change" in str(raised.value) or "invalid transition" in str(raised.value)
    assert await read_status(engine, task_id) == current


async def test_database_trigger_rejects_completed_back_to_running(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.COMPLETED)

    with pytest.raises(DBAPIError, match="final status"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE tasks SET status = 'running', lease_token = gen_random_uuid(), "
                    "lease_expires_at = now() WHERE id = :id"
                ),
                {"id": task_id},
            )

    assert await read_status(engine, task_id) == "completed"


async def test_database_trigger_rejects_lowering_attempts(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.RUNNING, attempts=2)

    with pytest.raises(DBAPIError, match="cannot go down"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE tasks SET attempts = 0 WHERE id = :id"), {"id": task_id})


async def test_task_logs_reject_updates(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        task, _, _ = await crud.create_task(
            conn, name="x", type="notification", execution_time=0, failure_rate=0, max_attempts=3, max_pending=10
        )

    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE task_logs SET message = 'edited' WHERE task_id = :id"), {"id": task["id"]})


async def test_status_counts_follow_every_change(engine: AsyncEngine) -> None:
    pending_id = await insert_task(engine, TaskStatus.PENDING)
    await insert_task(engine, TaskStatus.PENDING)
    completed_id = await insert_task(engine, TaskStatus.COMPLETED)

    async with engine.begin() as conn:
        await crud.cancel_task(conn, pending_id)
        await crud.delete_task(conn, completed_id)
        counts = await crud.count_tasks_by_status(conn)

    assert counts == {"pending": 1, "running": 0, "completed": 0, "failed": 0, "cancelled": 1}


async def test_delete_refused_while_task_is_pending(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.PENDING)

    with pytest.raises(TaskNotDeletableError):
        async with engine.begin() as conn:
            await crud.delete_task(conn, task_id)

    assert await read_status(engine, task_id) == "pending"


async def test_claim_skips_tasks_not_yet_due(engine: AsyncEngine) -> None:
    task_id = await insert_task(engine, TaskStatus.PENDING)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE tasks SET run_at = now() + interval '1 hour' WHERE id = :id"), {"id": task_id})

    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        claimed = await crud.claim_tasks(driver, worker_id=uuid.uuid4(), limit=10, lease_seconds=30)

    assert claimed == []


async def create_with_claim(engine: AsyncEngine, name: str, lease_seconds: float = 30) -> tuple[dict, list]:
    """Create a task on an autocommit connection, claiming for a new worker id as the API does."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        task, created, claimed = await crud.create_task(
            conn, name=name, type="notification", execution_time=0, failure_rate=0, max_attempts=3,
            max_pending=100, claim_for=uuid.uuid4(), lease_seconds=lease_seconds,
        )
    assert created
    return task, claimed


async def log_lines(engine: AsyncEngine, task_id: int) -> list[tuple[int, str, int]]:
    """(attempt, message, creating transaction id) of each log line of a task, oldest first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT attempt, message, xmin::text::bigint FROM task_logs WHERE task_id = :id ORDER BY id"),
            {"id": task_id},
        )
        return [tuple(row) for row in rows]


async def test_claiming_create_commits_pending_first(engine: AsyncEngine) -> None:
    task, claimed = await create_with_claim(engine, "claimed at once")

    assert task["status"] == "pending"
    assert [run.task_id for run in claimed] == [task["id"]]
    assert claimed[0].attempt == 1
    assert await read_status(engine, task["id"]) == "running"
    (created_attempt, created_message, created_xid), (run_attempt, run_message, run_xid) = await log_lines(
        engine, task["id"]
    )
    assert (created_attempt, created_message) == (0, "task created")
    assert (run_attempt, run_message) == (1, "run 1 started")
    assert run_xid != created_xid


async def test_claiming_create_takes_oldest_task(engine: AsyncEngine) -> None:
    older_id = await insert_task(engine, TaskStatus.PENDING)

    task, claimed = await create_with_claim(engine, "newer")

    assert [run.task_id for run in claimed] == [older_id]
    assert await read_status(engine, older_id) == "running"
    assert await read_status(engine, task["id"]) == "pending"


async def test_claiming_create_in_transaction_writes_nothing(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError, match="invalid transaction termination"):
        async with engine.begin() as conn:
            await crud.create_task(
                conn, name="x", type="notification", execution_time=0, failure_rate=0, max_attempts=3,
                max_pending=100, claim_for=uuid.uuid4(), lease_seconds=30,
            )

    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM tasks"))).scalar_one() == 0
        assert (await conn.execute(text("SELECT count(*) FROM task_logs"))).scalar_one() == 0


async def test_failed_claim_leaves_task_pending(engine: AsyncEngine) -> None:
    # An infinite lease makes the claim's make_interval() fail after the task has committed.
    task, claimed = await create_with_claim(engine, "claim fails", lease_seconds=float("inf"))

    assert claimed == []
    assert await read_status(engine, task["id"]) == "pending"
    assert [message for _, message, _ in await log_lines(engine, task["id"])] == ["task created"]


async def pending_notifications_during(engine: AsyncEngine, action: Callable[[], Awaitable[object]]) -> int:
    """Count the tasks_pending notifications that a listener receives while action runs."""
    received: list[str] = []
    async with engine.connect() as conn:
        listener = (await conn.get_raw_connection()).driver_connection
        await listener.add_listener("tasks_pending", lambda *args: received.append(args[-1]))
        await action()
        # A notification sent at the action's commit arrives before this query's result.
        await listener.execute("SELECT 1")
        await asyncio.sleep(0)
        # The LISTEN must not go back to the pool with the connection.
        await conn.invalidate()
    return len(received)


async def test_plain_create_wakes_workers(engine: AsyncEngine) -> None:
    async def create() -> None:
        async with engine.begin() as conn:
            await crud.create_task(
                conn, name="x", type="notification", execution_time=0, failure_rate=0, max_attempts=3, max_pending=10
            )

    assert await pending_notifications_during(engine, create) == 1


async def test_create_claiming_own_task_wakes_nobody(engine: AsyncEngine) -> None:
    assert await pending_notifications_during(engine, lambda: create_with_claim(engine, "claimed")) == 0


async def test_create_claiming_older_task_wakes_workers(engine: AsyncEngine) -> None:
    await insert_task(engine, TaskStatus.PENDING)

    assert await pending_notifications_during(engine, lambda: create_with_claim(engine, "newer")) == 1


async def test_failed_claim_wakes_workers(engine: AsyncEngine) -> None:
    def create() -> Awaitable[object]:
        return create_with_claim(engine, "claim fails", lease_seconds=float("inf"))

    assert await pending_notifications_during(engine, create) == 1
