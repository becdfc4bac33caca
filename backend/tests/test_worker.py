"""The worker as real processes: restarts, two workers on one database, SIGKILL and SIGTERM."""

import ast
import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import crud
from app.settings import Settings
from app.worker import Worker, compute_retry_delay
from tests.conftest import wait_until
from tests.processes import BACKEND_DIR, ApiProcess, WorkerProcess

pytestmark = pytest.mark.slow

FAST_LEASE = {
    "LEASE_SECONDS": "2",
    "WORKER_POLL_INTERVAL_SECONDS": "0.2",
    "RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "RETRY_BACKOFF_MAX_SECONDS": "0.3",
    "LOG_LEVEL": "INFO",
}


def process_env(database_url: str, **overrides: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, **FAST_LEASE, **overrides}


async def insert_tasks(engine: AsyncEngine, count: int, execution_time: float, failure_rate: float = 0.0) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tasks (name, type, execution_time, failure_rate, max_attempts) "
                "SELECT 'bulk-' || n, CASE WHEN n % 2 = 0 THEN 'notification' ELSE 'processing' END, "
                ":execution_time, :failure_rate, 3 FROM generate_series(1, :count) AS n"
            ),
            {"count": count, "execution_time": execution_time, "failure_rate": failure_rate},
        )


async def count_by_status(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
        return {status: count for status, count in rows}


def all_finished(engine: AsyncEngine, total: int):
    async def check() -> bool:
        counts = await count_by_status(engine)
        return counts.get("completed", 0) + counts.get("failed", 0) == total

    return check


def test_retry_delay_doubles_with_jitter_up_to_cap() -> None:
    settings = Settings(retry_backoff_base_seconds=1, retry_backoff_max_seconds=3)

    first = [compute_retry_delay(settings, 1) for _ in range(200)]
    second = [compute_retry_delay(settings, 2) for _ in range(200)]
    fifth = [compute_retry_delay(settings, 5) for _ in range(200)]

    assert min(first) >= 0.8
    assert max(first) <= 1.2
    assert min(second) >= 1.6
    assert max(second) <= 2.4
    assert max(fifth) == pytest.approx(3.0)
    assert len(set(first)) > 1


async def test_worker_runs_tasks_concurrently(engine: AsyncEngine, worker: Worker) -> None:
    await insert_tasks(engine, 50, execution_time=1.0)
    started = time.monotonic()

    await wait_until(all_finished(engine, 50), timeout=10, what="50 tasks finished")

    assert time.monotonic() - started < 5
    assert await count_by_status(engine) == {"completed": 50}


async def test_adopt_after_stop_releases_run(engine: AsyncEngine, settings: Settings) -> None:
    worker = Worker(engine, settings)
    loop = asyncio.create_task(worker.run())
    assert worker.reserve_slot()
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        task, _, claimed = await crud.create_task(
            conn, name="claimed while stopping", type="notification", execution_time=5, failure_rate=0,
            max_attempts=3, max_pending=100, claim_for=worker.id, lease_seconds=30,
        )
    await worker.stop()
    await loop

    await worker.adopt(claimed)

    assert [run.task_id for run in claimed] == [task["id"]]
    assert not worker.reserve_slot()
    assert worker.running_count == 0
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT status, attempts FROM tasks WHERE id = :id"), {"id": task["id"]})).one()
    assert tuple(row) == ("pending", 0)


async def test_task_survives_app_restart(database_url: str, tmp_path: Path) -> None:
    env = process_env(database_url)
    first = ApiProcess(env, tmp_path / "api-1.log").start()
    try:
        first.wait_until_serving()
        task = httpx.post(f"{first.url}/tasks/", json={"name": "survivor", "type": "processing", "execution_time": 0.5}).json()
    finally:
        exit_code = first.stop()
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert exit_code in (0, -signal.SIGTERM)
    assert "worker stopped" in first.output()

    second = ApiProcess(env, tmp_path / "api-2.log", port=first.port).start()
    try:
        second.wait_until_serving()
        deadline = time.monotonic() + 15
        current = {}
        while time.monotonic() < deadline:
            current = httpx.get(f"{second.url}/tasks/{task['id']}").json()
            if current["status"] == "completed":
                break
            await asyncio.sleep(0.1)
    finally:
        second.stop()

    assert current["name"] == "survivor"
    assert current["status"] == "completed"


async def test_two_worker_processes_run_each_task_once(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    env = process_env(database_url, WORKER_CONCURRENCY="100", WORKER_BATCH_SIZE="20")
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log").start() for n in range(2)]
    try:
        await insert_tasks(engine, 500, execution_time=0.05)
        await wait_until(all_finished(engine, 500), timeout=60, what="500 tasks finished")
    finally:
        exit_codes = [process.stop() for process in workers]

    async with engine.connect() as conn:
        starts = await conn.execute(
            text(
                "SELECT task_id, attempt, count(*) FROM task_logs WHERE message LIKE 'run % started' "
                "GROUP BY task_id, attempt"
            )
        )
        per_run = [row[2] for row in starts]
        completions = (
            await conn.execute(text("SELECT count(*) FROM task_logs WHERE message = 'completed'"))
        ).scalar_one()
        attempts = (await conn.execute(text("SELECT DISTINCT attempt FROM task_logs"))).scalars().all()
    assert exit_codes == [0, 0]
    assert len(per_run) == 500
    assert set(per_run) == {1}
    assert completions == 500
    assert attempts == [1]
    assert all("event=started" in process.output() for process in workers)
    assert await count_by_status(engine) == {"completed": 500}


async def test_killed_worker_task_returns_after_lease(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    env = process_env(database_url)
    victim = WorkerProcess(env, tmp_path / "victim.log").start()
    try:
        await insert_tasks(engine, 1, execution_time=1.0)

        async def is_running() -> bool:
            return (await count_by_status(engine)).get("running") == 1

        await wait_until(is_running, timeout=15, what="task running")
        victim.signal(signal.SIGKILL)
        victim.wait(5)
    finally:
        victim.stop()

    rescuer = WorkerProcess(env, tmp_path / "rescuer.log").start()
    try:
        await wait_until(all_finished(engine, 1), timeout=20, what="task finished after the lease")
    finally:
        rescuer.stop()

    async with engine.connect() as conn:
        task = (await conn.execute(text("SELECT status, attempts FROM tasks"))).one()
        messages = (await conn.execute(text("SELECT message FROM task_logs ORDER BY id"))).scalars().all()
    assert task.status == "completed"
    assert task.attempts == 1
    assert "run 1 failed: worker lost (lease expired)" in messages
    assert "run 2 started" in messages
    assert messages[-1] == "completed"
    assert "task recovered after a lost worker" in rescuer.output()


async def test_sigterm_returns_running_task_without_counting_failure(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    env = process_env(database_url, SHUTDOWN_GRACE_SECONDS="0.5")
    process = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        await insert_tasks(engine, 3, execution_time=30)

        async def all_running() -> bool:
            return (await count_by_status(engine)).get("running") == 3

        await wait_until(all_running, timeout=15, what="tasks running")
        process.signal(signal.SIGTERM)
        exit_code = process.wait(15)
    finally:
        process.stop()

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT status, attempts, lease_token FROM tasks"))).all()
        released = (
            await conn.execute(text("SELECT count(*) FROM task_logs WHERE message LIKE '%returned to the queue%'"))
        ).scalar_one()
    assert exit_code == 0
    assert [(row.status, row.attempts, row.lease_token) for row in rows] == [("pending", 0, None)] * 3
    assert released == 3


async def test_sigterm_lets_short_tasks_finish_within_grace(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    env = process_env(database_url, SHUTDOWN_GRACE_SECONDS="5")
    process = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        await insert_tasks(engine, 3, execution_time=1.0)

        async def all_running() -> bool:
            return (await count_by_status(engine)).get("running") == 3

        await wait_until(all_running, timeout=15, what="tasks running")
        process.signal(signal.SIGTERM)
        exit_code = process.wait(15)
    finally:
        process.stop()

    assert exit_code == 0
    assert await count_by_status(engine) == {"completed": 3}


async def test_late_result_of_superseded_run_is_discarded(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    env = process_env(database_url)
    paused = WorkerProcess(env, tmp_path / "paused.log").start()
    rescuer = None
    try:
        await insert_tasks(engine, 1, execution_time=1.5)

        async def is_running() -> bool:
            return (await count_by_status(engine)).get("running") == 1

        await wait_until(is_running, timeout=15, what="task running")
        paused.signal(signal.SIGSTOP)
        rescuer = WorkerProcess(env, tmp_path / "rescuer.log").start()
        await wait_until(all_finished(engine, 1), timeout=20, what="task finished by the rescuer")
        paused.signal(signal.SIGCONT)

        async def discarded() -> bool:
            async with engine.connect() as conn:
                count = await conn.execute(text("SELECT count(*) FROM task_logs WHERE message LIKE '%discarded%'"))
                return count.scalar_one() == 1

        await wait_until(discarded, timeout=15, what="late result discarded")
    finally:
        paused.stop()
        if rescuer is not None:
            rescuer.stop()

    async with engine.connect() as conn:
        completions = (await conn.execute(text("SELECT count(*) FROM task_logs WHERE message = 'completed'"))).scalar_one()
        task = (await conn.execute(text("SELECT status, attempts FROM tasks"))).one()
    assert completions == 1
    assert task.status == "completed"
    assert task.attempts == 1


def test_application_code_never_calls_time_sleep() -> None:
    offenders = []
    for path in sorted((BACKEND_DIR / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "sleep" and getattr(node.value, "id", None) == "time":
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "time" and any(a.name == "sleep" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")

    assert offenders == []


def test_application_code_starts_no_threads() -> None:
    offenders = []
    for path in sorted((BACKEND_DIR / "app").rglob("*.py")):
        source = path.read_text()
        for forbidden in ("import threading", "run_in_executor", "to_thread", "ThreadPoolExecutor"):
            if forbidden in source:
                offenders.append(f"{path.name}: {forbidden}")

    assert offenders == []
