"""Lifecycle rules in crud.py and in the database trigger."""

import itertools
import uuid

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
        task, _ = await crud.create_task(
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

    async with engine.begin() as conn:
        claimed = await crud.claim_tasks(conn, worker_id=uuid.uuid4(), limit=10, lease_seconds=30)

    assert claimed == []
