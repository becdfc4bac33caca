"""Benchmarks of our task runner. Each subcommand prints one table and writes one JSON file.

  drain      N pending tasks inserted with SQL, then one worker process runs them all
  pickup     an idle worker; tasks created one at a time through the API
  api        POST /tasks/ and GET /tasks/ at a fixed request rate
  scale      dashboard queries and drain throughput as the table grows to each size

Run with the backend's virtualenv or bench/.venv, from any directory, for example
`backend/.venv/bin/python bench/ours.py drain --tasks 10000`.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Child,
    asyncpg_dsn,
    benchmark_database,
    free_port,
    median,
    print_table,
    server_for_commit_times,
    start_api,
    start_worker,
    summarize_ms,
    wait_for_http,
    write_result,
)
from loadclient import HttpPool  # noqa: E402

WORKER_READY_TIMEOUT_SECONDS = 30.0
NAMES = ("send welcome email", "resize image", "build report", "sync crm contacts", "export csv")


# --- shared steps -------------------------------------------------------------------------


async def insert_pending_tasks(conn: asyncpg.Connection, count: int, execution_time: float) -> int:
    """Insert count due pending tasks with their creation log line; return the first new id."""
    first_id = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM tasks")
    await conn.execute(
        """
        WITH inserted AS (
            INSERT INTO tasks (name, type, execution_time, max_attempts)
            SELECT 'bench ' || g, 'notification', $2, 3 FROM generate_series(1, $1) AS g
            RETURNING id
        )
        INSERT INTO task_logs (task_id, attempt, level, message)
        SELECT id, 0, 'INFO', 'task created' FROM inserted
        """,
        count,
        execution_time,
    )
    return first_id


async def wait_for_worker(conn: asyncpg.Connection, worker: Child) -> None:
    """Wait until the worker process has written its first heartbeat."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        worker.check_alive()
        if await conn.fetchval("SELECT count(*) FROM workers"):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the worker wrote no heartbeat within {WORKER_READY_TIMEOUT_SECONDS} s")


async def wait_for_completion(
    conn: asyncpg.Connection, first_id: int, count: int, timeout: float, worker: Child | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker is not None:
            worker.check_alive()
        done = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE id >= $1 AND status IN ('completed', 'failed')", first_id
        )
        if done >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"only part of {count} tasks finished within {timeout} s")


async def measure_drain_span(conn: asyncpg.Connection, first_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
               extract(epoch FROM max(finished_at) - min(started_at)) AS span
        FROM tasks WHERE id >= $1
        """,
        first_id,
    )
    return {"completed": row["completed"], "span_seconds": float(row["span"] or 0.0)}


# --- drain and concurrency ----------------------------------------------------------------


async def run_drain(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Insert the tasks, start one worker process, wait until they are done, and stop it."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        first_id = await insert_pending_tasks(conn, args.tasks, args.execution_time)
        await conn.execute("ANALYZE tasks")
        worker = start_worker(
            url,
            "drain-worker",
            worker_concurrency=args.concurrency,
            worker_batch_size=args.batch_size,
            worker_poll_interval_seconds=1.0,
            db_pool_size=4,
        )
        started = time.monotonic()
        try:
            await wait_for_completion(conn, first_id, args.tasks, args.timeout, worker)
            wall = time.monotonic() - started
            peak_rss = worker.peak_rss_mb()
        finally:
            worker.stop()
        span = await measure_drain_span(conn, first_id)
    finally:
        await conn.close()

    return {
        "tasks": args.tasks,
        "execution_time": args.execution_time,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "completed": span["completed"],
        "span_seconds": round(span["span_seconds"], 3),
        "tasks_per_second": round(args.tasks / span["span_seconds"], 1) if span["span_seconds"] else None,
        "wall_from_start_seconds": round(wall, 3),
        "peak_rss_mb": round(peak_rss, 1) if peak_rss is not None else None,
    }


def command_drain(args: argparse.Namespace) -> dict[str, Any]:
    with benchmark_database("bench") as url:
        result = asyncio.run(run_drain(url, args))
    print_table(
        f"ours: drain of {args.tasks:,} tasks of {args.execution_time} s (one worker process)",
        ["completed", "span s", "tasks/s", "peak RSS MB"],
        [[result["completed"], result["span_seconds"], result["tasks_per_second"], result["peak_rss_mb"]]],
    )
    return result


# --- pickup latency -----------------------------------------------------------------------


async def measure_pickup(
    url: str, api_port: int, count: int, interval: float, warmup: int, from_commit: bool
) -> list[float]:
    """Create tasks one at a time through the API; return the seconds until each started.

    The clock starts at the commit of the creating transaction when commit timestamps are
    on, else at its INSERT (the clock_timestamp of the task's "task created" log line), so
    that the figure then also contains the commit itself. started_at is the start of the
    claiming transaction.
    """
    pool = HttpPool("127.0.0.1", api_port, 1)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    ids: list[int] = []
    created_at = "pg_xact_commit_timestamp(l.xmin)" if from_commit else "l.created_at"
    try:
        for index in range(warmup + count):
            status, body = await pool.request(
                "POST", "/tasks/", {"name": f"pickup {index}", "type": "notification", "execution_time": 0}
            )
            if status != 201:
                raise RuntimeError(f"POST /tasks/ returned {status}: {body[:300]!r}")
            if index >= warmup:
                ids.append(int(body.split(b'"id":', 1)[1].split(b",", 1)[0]))
            await asyncio.sleep(interval)
        first_id = min(ids)
        await wait_for_completion(conn, first_id, count, timeout=30)
        # The "task created" line is never updated, so its xmin is the creating transaction.
        rows = await conn.fetch(
            f"""
            SELECT extract(epoch FROM t.started_at - {created_at}) AS latency
            FROM tasks t JOIN task_logs l ON l.task_id = t.id AND l.attempt = 0
            WHERE t.id = ANY($1::bigint[])
            """,
            ids,
        )
    finally:
        await conn.close()
        await pool.close()
    return [float(row["latency"]) for row in rows]


def command_pickup(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"count": args.count, "interval_seconds": args.interval}
    with server_for_commit_times() as from_commit:
        results["measured_from"] = "commit" if from_commit else "insert"
        for mode in args.modes:
            with benchmark_database("bench") as url:
                port = free_port()
                processes: list[Child] = []
                try:
                    if mode == "in_process":
                        processes.append(start_api(url, port, "pickup-api", worker_enabled="true"))
                    else:
                        processes.append(start_api(url, port, "pickup-api", worker_enabled="false"))
                        processes.append(start_worker(url, "pickup-worker"))
                    wait_for_http(processes[0], f"http://127.0.0.1:{port}/openapi.json")
                    latencies = asyncio.run(
                        measure_pickup(url, port, args.count, args.interval, args.warmup, from_commit)
                    )
                finally:
                    for process in processes:
                        process.stop()
            results[mode] = summarize_ms(latencies)

    print_table(
        f"ours: pickup latency from the creating {results['measured_from']}, "
        f"{args.count} tasks {args.interval * 1000:.0f} ms apart",
        ["worker", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [[mode, results[mode]["p50_ms"], results[mode]["p95_ms"], results[mode]["p99_ms"], results[mode]["max_ms"]]
         for mode in args.modes],
    )
    return results


# --- API under load -----------------------------------------------------------------------


async def drive_fixed_rate(
    pool: HttpPool, method: str, path: str, body: Any, rate: float, duration: float
) -> dict[str, Any]:
    """Send requests on a fixed schedule (open loop) and time each from its scheduled start.

    Timing from the schedule, not from the send, keeps a stalled server from hiding its
    queueing delay (coordinated omission). The request count is bounded by rate x duration.
    """
    total = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def send(scheduled: float) -> None:
        try:
            status, _ = await pool.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        latencies.append(loop.time() - scheduled)
        if status >= 400:
            errors[str(status)] = errors.get(str(status), 0) + 1

    pending: list[asyncio.Task[None]] = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(send(scheduled)))
    await asyncio.wait_for(asyncio.gather(*pending), timeout=60)
    achieved = total / (loop.time() - start)
    return {**summarize_ms(latencies), "requests": total, "achieved_rate": round(achieved, 1),
            "errors": sum(errors.values()), "error_kinds": errors}


async def measure_api(port: int, rate: float, duration: float, connections: int) -> dict[str, Any]:
    pool = HttpPool("127.0.0.1", port, connections)
    body = {"name": "load test", "type": "notification", "execution_time": 0}
    try:
        # Warm up the connection pools of both sides before anything is timed.
        await drive_fixed_rate(pool, "GET", "/tasks/", None, rate, 1.0)
        post = await drive_fixed_rate(pool, "POST", "/tasks/", body, rate, duration)
        get = await drive_fixed_rate(pool, "GET", "/tasks/", None, rate, duration)
    finally:
        await pool.close()
    return {"post": post, "get": get}


def command_api(args: argparse.Namespace) -> dict[str, Any]:
    with benchmark_database("bench") as url:
        port = free_port()
        # The API as `make run` serves it, with its worker, so created tasks also run.
        api = start_api(url, port, "load-api", worker_enabled="true")
        try:
            wait_for_http(api, f"http://127.0.0.1:{port}/openapi.json")
            result = asyncio.run(measure_api(port, args.rate, args.duration, args.connections))
        finally:
            api.stop()
    result.update({"rate": args.rate, "duration_seconds": args.duration})
    print_table(
        f"ours: API at {args.rate:.0f} req/s for {args.duration:.0f} s per route",
        ["route", "requests", "p50 ms", "p99 ms", "max ms", "errors"],
        [[f"{name.upper()} /tasks/", result[name]["requests"], result[name]["p50_ms"], result[name]["p99_ms"],
          result[name]["max_ms"], result[name]["errors"]] for name in ("post", "get")],
    )
    return result


# --- dashboard and cost growth ------------------------------------------------------------

DASHBOARD_QUERIES = {
    "first_page": "/tasks/?limit=50",
    "status_filter": "/tasks/?limit=50&status=failed",
    "name_search": "/tasks/?limit=50&q=4242",
    "status_counts": "/tasks/?limit=1",
}


async def grow_table(conn: asyncpg.Connection, target_rows: int) -> int:
    """Add history rows until tasks contains target_rows: mostly completed, some of every status.

    Pending rows are scheduled a year ahead and running rows hold a lease for a year, so a
    worker started later neither claims nor recovers them.
    """
    current = await conn.fetchval("SELECT count(*) FROM tasks")
    missing = target_rows - current
    if missing <= 0:
        return current
    await conn.execute(
        """
        INSERT INTO tasks (name, type, execution_time, status, attempts, max_attempts, run_at,
                           lease_token, lease_expires_at, last_error,
                           created_at, updated_at, started_at, finished_at)
        SELECT names[1 + g % 5] || ' ' || g,
               CASE WHEN g % 3 = 0 THEN 'processing' ELSE 'notification' END,
               (g % 10)::float8, s.status,
               CASE WHEN s.status = 'failed' THEN 3 ELSE 0 END, 3,
               CASE WHEN s.status = 'pending' THEN now() + interval '1 year' ELSE t.created END,
               CASE WHEN s.status = 'running' THEN gen_random_uuid() END,
               CASE WHEN s.status = 'running' THEN now() + interval '1 year' END,
               CASE WHEN s.status = 'failed' THEN 'simulated failure' END,
               t.created, t.created,
               CASE WHEN s.status <> 'pending' THEN t.created END,
               CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN t.created END
        FROM generate_series($1::bigint + 1, $1::bigint + $2::bigint) AS g,
             CAST($3 AS text[]) AS names,
             LATERAL (SELECT now() - make_interval(secs => ($1::bigint + $2::bigint - g) * 0.5) AS created) AS t,
             LATERAL (SELECT CASE WHEN g % 100 < 94 THEN 'completed'
                                  WHEN g % 100 < 97 THEN 'failed'
                                  WHEN g % 100 < 98 THEN 'cancelled'
                                  WHEN g % 100 < 99 THEN 'pending'
                                  ELSE 'running' END AS status) AS s
        """,
        current,
        missing,
        list(NAMES),
        timeout=1800,
    )
    await conn.execute("ANALYZE tasks", timeout=600)
    await conn.execute("ANALYZE task_logs", timeout=600)
    return target_rows


async def measure_dashboard(port: int, repeats: int) -> dict[str, dict[str, float]]:
    pool = HttpPool("127.0.0.1", port, 1)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, path in DASHBOARD_QUERIES.items():
            for _ in range(5):
                await pool.request("GET", path)
            latencies: list[float] = []
            for _ in range(repeats):
                started = time.perf_counter()
                status, body = await pool.request("GET", path)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"GET {path} returned {status}: {body[:300]!r}")
            results[name] = summarize_ms(latencies)
    finally:
        await pool.close()
    return results


def command_scale(args: argparse.Namespace) -> dict[str, Any]:
    drain_args = argparse.Namespace(
        tasks=args.drain_tasks, execution_time=0.0, concurrency=args.concurrency,
        batch_size=args.batch_size, timeout=args.timeout,
    )
    sizes: dict[str, Any] = {}
    with benchmark_database("benchscale") as url:
        for size in args.sizes:
            asyncio.run(grow_table_once(url, size))
            passes = []
            for _ in range(args.passes):
                port = free_port()
                api = start_api(url, port, "scale-api", worker_enabled="false")
                try:
                    wait_for_http(api, f"http://127.0.0.1:{port}/openapi.json")
                    passes.append(asyncio.run(measure_dashboard(port, args.repeats)))
                finally:
                    api.stop()
            queries = {
                name: {key: median([one[name][key] for one in passes]) for key in ("p50_ms", "p99_ms")}
                for name in DASHBOARD_QUERIES
            }
            drains = [asyncio.run(run_drain(url, drain_args)) for _ in range(args.passes)]
            sizes[str(size)] = {
                "rows": size,
                "queries": queries,
                "query_passes": passes,
                "drain_tasks_per_second": median([drain["tasks_per_second"] for drain in drains]),
                "drains": drains,
            }

    rows = []
    for size, entry in sizes.items():
        for name in DASHBOARD_QUERIES:
            rows.append([int(size), name, entry["queries"][name]["p50_ms"], entry["queries"][name]["p99_ms"]])
        rows.append([int(size), "drain tasks/s", entry["drain_tasks_per_second"], None])
    print_table("ours: dashboard queries (GET, one connection) and drain as the table grows",
                ["rows", "query", "p50 ms", "p99 ms"], rows)
    return {"sizes": sizes, "passes": args.passes, "repeats": args.repeats}


async def grow_table_once(url: str, size: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await grow_table(conn, size)
    finally:
        await conn.close()


# --- command line -------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="JSON file to write (default: bench/results/<name>-<time>.json)")
    commands = parser.add_subparsers(dest="command", required=True)

    drain = commands.add_parser("drain", help="run N pending tasks with one worker process")
    drain.add_argument("--tasks", type=int, default=10_000)
    drain.add_argument("--execution-time", type=float, default=0.0, help="seconds each task sleeps")
    drain.add_argument("--concurrency", type=int, default=10_000, help="WORKER_CONCURRENCY")
    drain.add_argument("--batch-size", type=int, default=1000, help="WORKER_BATCH_SIZE")
    drain.add_argument("--timeout", type=float, default=180.0, help="seconds before the run is given up")

    pickup = commands.add_parser("pickup", help="latency from a task's creation to its start")
    pickup.add_argument("--count", type=int, default=200)
    pickup.add_argument("--warmup", type=int, default=10)
    pickup.add_argument("--interval", type=float, default=0.05, help="seconds between two creates")
    pickup.add_argument("--modes", nargs="+", default=["in_process", "separate"], choices=["in_process", "separate"])

    api = commands.add_parser("api", help="POST and GET /tasks/ at a fixed rate")
    api.add_argument("--rate", type=float, default=200.0, help="requests per second")
    api.add_argument("--duration", type=float, default=30.0, help="seconds per route")
    api.add_argument("--connections", type=int, default=32, help="keep-alive connections of the client")

    scale = commands.add_parser("scale", help="dashboard queries and drain throughput at several table sizes")
    scale.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    scale.add_argument("--repeats", type=int, default=100, help="requests per query and pass")
    scale.add_argument("--passes", type=int, default=3, help="passes per size; the medians are reported")
    scale.add_argument("--drain-tasks", type=int, default=10_000)
    scale.add_argument("--concurrency", type=int, default=10_000)
    scale.add_argument("--batch-size", type=int, default=1000)
    scale.add_argument("--timeout", type=float, default=180.0)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    commands = {"drain": command_drain, "pickup": command_pickup, "api": command_api, "scale": command_scale}
    result = commands[args.command](args)
    path = write_result(f"ours-{args.command}", {"system": "ours", "arguments": vars(args), "result": result},
                        args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
