"""Worker faults and load as real processes: SIGKILL under load, a lost LISTEN connection, a deep queue.

run_kill_scenario() is also the full-size soak run (soak/kill_workers.py), so this module
imports nothing from conftest at module level: importing conftest creates a test database.
"""

import asyncio
import signal
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.processes import ApiProcess, WorkerProcess

pytestmark = pytest.mark.slow

FAST_LEASE_ENV = {
    "LEASE_SECONDS": "2",
    "WORKER_POLL_INTERVAL_SECONDS": "0.5",
    "RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "RETRY_BACKOFF_MAX_SECONDS": "0.3",
    "SHUTDOWN_GRACE_SECONDS": "3",
    "LOG_LEVEL": "INFO",
}


async def poll_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.1, what: str
) -> float:
    """Await condition until it is true; return the seconds it took, or fail after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def scalar(engine: AsyncEngine, sql: str, **params: object) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def insert_random_tasks(engine: AsyncEngine, count: int, low: float, high: float, name: str = "load") -> None:
    """Insert count pending tasks with execution times spread uniformly between low and high seconds."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tasks (name, type, execution_time, failure_rate, max_attempts) "
                "SELECT :name || '-' || n, CASE WHEN n % 2 = 0 THEN 'notification' ELSE 'processing' END, "
                "CAST(:low AS float8) + random() * (CAST(:high AS float8) - CAST(:low AS float8)), 0, 3 "
                "FROM generate_series(1, CAST(:count AS int)) AS n"
            ),
            {"name": name, "count": count, "low": low, "high": high},
        )


async def count_by_status(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
        return {status: count for status, count in rows}


# --- the SIGKILL scenario -------------------------------------------------------------------


@dataclass
class KillReport:
    """Outcome of run_kill_scenario; every count except worker_lost_runs must be 0."""

    tasks: int
    kills: int
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    stuck: int = 0
    run_twice: int = 0
    failed_with_runs_left: int = 0
    runs_without_outcome: int = 0
    worker_lost_runs: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


async def worker_id_of(engine: AsyncEngine, pid: int, timeout: float = 15) -> str:
    """Wait for the heartbeat row of the worker process with this pid and return its id."""
    found: list[str] = []

    async def registered() -> bool:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT id FROM workers WHERE pid = :pid"), {"pid": pid})).first()
        if row is not None:
            found.append(str(row.id))
        return row is not None

    await poll_until(registered, timeout=timeout, what=f"heartbeat of worker pid {pid}")
    return found[0]


async def running_owned_by(engine: AsyncEngine, worker_id: str) -> int:
    return int(
        await scalar(
            engine, "SELECT count(*) FROM tasks WHERE status = 'running' AND lease_owner = CAST(:id AS uuid)", id=worker_id
        )
    )


async def finished_at_least(engine: AsyncEngine, expected: int) -> bool:
    counts = await count_by_status(engine)
    return counts.get("completed", 0) + counts.get("failed", 0) >= expected


async def holds_runs(engine: AsyncEngine, worker_id: str) -> bool:
    return await running_owned_by(engine, worker_id) > 0


async def measure_recovery(engine: AsyncEngine, worker_id: str, killed_at: float) -> float:
    """Wait until no task runs under the dead worker's lease; return the seconds since the kill."""

    async def recovered() -> bool:
        return await running_owned_by(engine, worker_id) == 0

    await poll_until(recovered, timeout=60, interval=0.05, what="runs of the killed worker to be recovered")
    return time.monotonic() - killed_at


async def check_outcomes(engine: AsyncEngine, report: KillReport) -> None:
    """Fill the report's counts from the tasks table and the task logs."""
    async with engine.connect() as conn:
        report.statuses = {
            status: count for status, count in await conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
        }
        report.lost = report.tasks - sum(report.statuses.values())
        report.stuck = report.statuses.get("pending", 0) + report.statuses.get("running", 0)
        report.run_twice = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT task_id FROM task_logs WHERE message = 'completed' "
                    "GROUP BY task_id HAVING count(*) > 1) AS twice"
                )
            )
        ).scalar_one()
        report.failed_with_runs_left = (
            await conn.execute(text("SELECT count(*) FROM tasks WHERE status = 'failed' AND attempts < max_attempts"))
        ).scalar_one()
        report.worker_lost_runs = (
            await conn.execute(text("SELECT count(*) FROM task_logs WHERE message LIKE 'run % failed: worker lost%'"))
        ).scalar_one()
        # Every started run must end in exactly one logged outcome: completed, failed (a lost
        # worker included) or returned to the queue by a graceful stop.
        report.runs_without_outcome = (
            await conn.execute(
                text(
                    """
                    SELECT CAST(coalesce(sum(greatest(started - ended, 0)), 0) AS int) FROM (
                        SELECT task_id,
                               count(*) FILTER (WHERE message LIKE 'run % started') AS started,
                               count(*) FILTER (WHERE message = 'completed'
                                                   OR message LIKE 'run % failed:%'
                                                   OR message LIKE 'run % returned to the queue%') AS ended
                        FROM task_logs GROUP BY task_id
                    ) AS runs
                    """
                )
            )
        ).scalar_one()


async def run_kill_scenario(
    engine: AsyncEngine,
    database_url: str,
    log_dir: Path,
    *,
    tasks: int,
    kills: int,
    concurrency: int,
    low: float = 0.2,
    high: float = 2.0,
    timeout: float = 300,
) -> KillReport:
    """Run tasks on 2 worker processes and SIGKILL one of them `kills` times, restarting it each time.

    Recovery time is measured from each SIGKILL until no task is left running under the dead
    worker's lease, that is until another worker took back every run the dead one held.
    """
    report = KillReport(tasks=tasks, kills=kills)
    env = {**FAST_LEASE_ENV, "DATABASE_URL": database_url, "WORKER_CONCURRENCY": str(concurrency)}
    workers = [WorkerProcess(env, log_dir / f"worker-{slot}-0.log").start() for slot in range(2)]
    retired: list[WorkerProcess] = []
    recoveries: list[asyncio.Task[float]] = []
    started = time.monotonic()
    try:
        await insert_random_tasks(engine, tasks, low, high, name="kill")
        for kill in range(kills):
            slot = kill % 2
            victim = workers[slot]
            victim_id = await worker_id_of(engine, victim.pid)
            # Spread the kills over the run: the k-th when k/(kills + 1) of the tasks are done.
            await poll_until(
                lambda: finished_at_least(engine, tasks * (kill + 1) // (kills + 1)),
                timeout=timeout,
                interval=0.05,
                what=f"{kill + 1}/{kills + 1} of the tasks finished",
            )
            await poll_until(
                lambda: holds_runs(engine, victim_id), timeout=30, interval=0.02, what="the victim to hold runs"
            )
            victim.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            victim.wait(10)
            retired.append(victim)
            workers[slot] = WorkerProcess(env, log_dir / f"worker-{slot}-{kill + 1}.log").start()
            recoveries.append(asyncio.create_task(measure_recovery(engine, victim_id, killed_at)))

        report.recovery_seconds = [round(seconds, 2) for seconds in await asyncio.gather(*recoveries)]
        await poll_until(
            lambda: finished_at_least(engine, tasks), timeout=timeout, interval=0.25, what=f"{tasks} tasks finished"
        )
        report.seconds = round(time.monotonic() - started, 1)
    finally:
        for recovery in recoveries:
            recovery.cancel()
        report.exit_codes = [process.stop() for process in workers]
        for process in retired:
            process.stop()

    await check_outcomes(engine, report)
    return report


async def test_sigkilled_workers_lose_no_task(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    report = await run_kill_scenario(engine, database_url, tmp_path, tasks=200, kills=3, concurrency=10)

    print(f"\nSIGKILL scenario: {report.as_dict()}")
    assert report.lost == 0
    assert report.stuck == 0
    assert report.run_twice == 0
    assert report.failed_with_runs_left == 0
    assert report.runs_without_outcome == 0
    assert report.worker_lost_runs >= report.kills
    assert report.statuses.get("completed", 0) + report.statuses.get("failed", 0) == report.tasks
    assert len(report.recovery_seconds) == report.kills
    assert report.exit_codes == [0, 0]


# --- the LISTEN connection ------------------------------------------------------------------


async def find_claiming_backend(engine: AsyncEngine, timeout: float = 10) -> int:
    """Return the pid of the backend the worker claims over, which is its LISTEN connection.

    PostgreSQL shows no session's LISTENs to others, and any session can call
    claim_due_tasks(). So the test locks the tasks table until the next claim
    queues behind the lock, and reads that claim's backend from pg_stat_activity.
    """
    async with engine.connect() as locker:
        await locker.execute(text("LOCK TABLE tasks IN EXCLUSIVE MODE"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with engine.connect() as observer:
                pid = (
                    await observer.execute(
                        text(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND query LIKE '%claim_due_tasks%'"
                        )
                    )
                ).scalar_one_or_none()
            if pid is not None:
                await locker.rollback()
                return int(pid)
            await asyncio.sleep(0.05)
        await locker.rollback()
    raise AssertionError(f"no claim queued behind the table lock within {timeout} s")


async def test_lost_listener_reconnects_and_tasks_still_run(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    env = {**FAST_LEASE_ENV, "DATABASE_URL": database_url}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:

        async def listening() -> bool:
            return "listening for new tasks" in worker.output()

        await poll_until(listening, timeout=15, what="the worker's LISTEN connection")
        await insert_random_tasks(engine, 5, 0.1, 0.2, name="warm-up")
        await poll_until(lambda: all_completed(engine, 5), timeout=10, what="warm-up tasks completed")
        first_pid = await find_claiming_backend(engine)

        await scalar(engine, "SELECT pg_terminate_backend(:pid)", pid=first_pid)
        # Created at once, so the task may arrive while the listener is reconnecting: the
        # claim loop's poll then finds it.
        await insert_random_tasks(engine, 1, 0.1, 0.1, name="during reconnect")
        pickup_seconds = await poll_until(
            lambda: all_completed(engine, 6), timeout=10, what="task created while the listener reconnected"
        )

        async def listening_again() -> bool:
            return worker.output().count("listening for new tasks") >= 2

        reconnect_seconds = await poll_until(listening_again, timeout=20, what="the listener to reconnect")
        second_pid = await find_claiming_backend(engine)
        await insert_random_tasks(engine, 1, 0.1, 0.1, name="after reconnect")
        await poll_until(lambda: all_completed(engine, 7), timeout=10, what="task after the reconnect")
    finally:
        exit_code = worker.stop()

    print(f"\nlistener loss: task completed {pickup_seconds:.2f} s after the kill, listener back after {reconnect_seconds:.2f} s")
    output = worker.output()
    assert exit_code == 0
    assert second_pid != first_pid
    assert output.count("listener connection lost") >= 1
    assert output.count("listening for new tasks") >= 2
    assert await count_by_status(engine) == {"completed": 7}


async def all_completed(engine: AsyncEngine, expected: int) -> bool:
    return (await count_by_status(engine)).get("completed", 0) == expected


# --- a deep queue ---------------------------------------------------------------------------


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def time_requests(url: str, path: str, count: int) -> tuple[list[float], set[int]]:
    durations: list[float] = []
    statuses: set[int] = set()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(path)
            durations.append(time.perf_counter() - started)
            statuses.add(response.status_code)
    return durations, statuses


def create_through_api(url: str, count: int, threads: int = 4) -> tuple[list[float], set[int]]:
    """POST count tasks from several threads at once; return each request's duration and the statuses."""
    durations: list[float] = []
    statuses: set[int] = set()
    lock = threading.Lock()

    def send(share: int, thread: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(share):
                body = {"name": f"api-{thread}-{n}", "type": "processing", "execution_time": 60}
                started = time.perf_counter()
                response = client.post("/tasks/", json=body)
                with lock:
                    durations.append(time.perf_counter() - started)
                    statuses.add(response.status_code)

    pool = [threading.Thread(target=send, args=(count // threads, thread)) for thread in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    return durations, statuses


@dataclass
class LoadReport:
    pending: int
    running_max: int
    concurrency: int
    create_per_second: float
    create_p99_ms: float
    health_p50_ms: float
    health_p99_ms: float
    list_p50_ms: float
    list_p99_ms: float
    rss_before_mb: float
    rss_after_mb: float


async def run_queue_scenario(
    engine: AsyncEngine, database_url: str, log_dir: Path, *, api_tasks: int, sql_tasks: int, samples: int
) -> LoadReport:
    """Fill the queue faster than one API-embedded worker drains it, then time reads against it."""
    concurrency = 50
    env = {
        **FAST_LEASE_ENV,
        "DATABASE_URL": database_url,
        "WORKER_CONCURRENCY": str(concurrency),
        "WORKER_BATCH_SIZE": str(concurrency),
        "SHUTDOWN_GRACE_SECONDS": "0",
        "LEASE_SECONDS": "30",
        "LOG_LEVEL": "WARNING",
    }
    api = ApiProcess(env, log_dir / "api.log").start()
    running_samples: list[int] = []
    try:
        api.wait_until_serving()
        process = psutil.Process(api.pid)
        rss_before = process.memory_info().rss / 2**20

        await insert_random_tasks(engine, sql_tasks, 60, 60, name="queued")
        started = time.perf_counter()
        create_durations, create_statuses = await asyncio.to_thread(create_through_api, api.url, api_tasks)
        create_seconds = time.perf_counter() - started
        running_samples.append((await count_by_status(engine)).get("running", 0))

        health, health_statuses = await asyncio.to_thread(time_requests, api.url, "/health", samples)
        running_samples.append((await count_by_status(engine)).get("running", 0))
        listing, list_statuses = await asyncio.to_thread(time_requests, api.url, "/tasks/", samples)
        counts = await count_by_status(engine)
        running_samples.append(counts.get("running", 0))
        rss_after = process.memory_info().rss / 2**20
    finally:
        api.stop()

    assert create_statuses == {201}
    assert health_statuses == {200}
    assert list_statuses == {200}
    return LoadReport(
        pending=counts.get("pending", 0),
        running_max=max(running_samples),
        concurrency=concurrency,
        create_per_second=round(len(create_durations) / create_seconds, 1),
        create_p99_ms=round(percentile(create_durations, 0.99) * 1000, 1),
        health_p50_ms=round(statistics.median(health) * 1000, 1),
        health_p99_ms=round(percentile(health, 0.99) * 1000, 1),
        list_p50_ms=round(statistics.median(listing) * 1000, 1),
        list_p99_ms=round(percentile(listing, 0.99) * 1000, 1),
        rss_before_mb=round(rss_before, 1),
        rss_after_mb=round(rss_after, 1),
    )


async def test_deep_queue_keeps_api_responsive(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    report = await run_queue_scenario(engine, database_url, tmp_path, api_tasks=1000, sql_tasks=4100, samples=300)

    # Timings are printed for docs/reliability.md, not asserted: they depend on the machine.
    print(f"\ndeep queue: {asdict(report)}")
    assert report.pending >= 5000
    assert 0 < report.running_max <= report.concurrency
    # The worker keeps at most WORKER_CONCURRENCY runs in memory, never the whole queue, so
    # 5,000 pending rows must not grow the process by more than a small fixed amount.
    assert report.rss_after_mb - report.rss_before_mb < 100

