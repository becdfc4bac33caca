"""The same benchmarks for two other task queues, run with bench/.venv only.

  procrastinate drain|pickup   Procrastinate (PostgreSQL) on a database of its own
  arq drain|pickup             arq (Redis at 127.0.0.1:6379), poll delay 10 ms

A drain enqueues all jobs first and then starts one worker process, which stops by itself
once the queue is empty (Procrastinate's wait=False, arq's burst mode). Throughput is the
job count over the span from the first job start to the last job end, as each queue records
them. Pickup latency is enqueue to start, as each queue records them; arq stores both
times in whole milliseconds.
"""

import argparse
import asyncio
import json
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    Child,
    asyncpg_dsn,
    benchmark_database,
    print_table,
    server_for_commit_times,
    summarize_ms,
    write_result,
)

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# A Redis database number of its own, so the benchmark's keys stay apart from others'.
REDIS_DATABASE = 13
ARQ_POLL_DELAY_SECONDS = 0.01


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report_peak_rss() -> None:
    """Print this worker process's peak RSS as the last line, for the parent to read."""
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def read_peak_rss(child: Child) -> float | None:
    for line in reversed(child.output().splitlines()):
        if line.startswith('{"peak_rss_mb"'):
            return json.loads(line)["peak_rss_mb"]
    return None


def start_anchor_worker(name: str, *arguments: str) -> Child:
    return Child(name, [sys.executable, str(Path(__file__).resolve()), *arguments], env={}, cwd=BENCH_DIR)


def wait_for_exit(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.is_running():
        time.sleep(0.05)
    if child.is_running():
        child.stop()
        raise RuntimeError(f"{child.name} did not finish within {timeout} s")
    if child.popen.returncode != 0:
        raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.output()[-3000:]}")


# --- Procrastinate ------------------------------------------------------------------------


def procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="sleep")
    async def sleep(seconds: float) -> None:
        if seconds:
            await asyncio.sleep(seconds)

    return app


async def procrastinate_worker(dsn: str, concurrency: int, wait: bool) -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, wait=wait, delete_jobs="never",
                                   install_signal_handlers=True)
    report_peak_rss()


async def procrastinate_setup(dsn: str) -> Any:
    app = procrastinate_app(dsn)
    await app.open_async()
    await app.schema_manager.apply_schema_async()
    return app


async def procrastinate_enqueue(dsn: str, jobs: int, seconds: float) -> None:
    app = await procrastinate_setup(dsn)
    try:
        task = app.tasks["sleep"]
        for first in range(0, jobs, 1000):
            await task.batch_defer_async(*({"seconds": seconds} for _ in range(first, min(jobs, first + 1000))))
    finally:
        await app.close_async()


async def procrastinate_span(dsn: str) -> tuple[int, float]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            """
            SELECT (SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'),
                   extract(epoch FROM (SELECT max(at) FROM procrastinate_events WHERE type = 'succeeded')
                                      - (SELECT min(at) FROM procrastinate_events WHERE type = 'started'))
            """
        )
        done, span = await cursor.fetchone()
    return int(done), float(span or 0.0)


def procrastinate_drain(args: argparse.Namespace) -> dict[str, Any]:
    with benchmark_database("benchproc", migrated=False) as url:
        dsn = asyncpg_dsn(url)
        asyncio.run(procrastinate_enqueue(dsn, args.tasks, args.execution_time))
        worker = start_anchor_worker("procrastinate-worker", "procrastinate", "worker", "--dsn", dsn,
                                     "--concurrency", str(args.concurrency), "--no-wait")
        wait_for_exit(worker, args.timeout)
        done, span = asyncio.run(procrastinate_span(dsn))
    return drain_result(args, done, span, read_peak_rss(worker))


async def procrastinate_pickup_run(
    dsn: str, count: int, warmup: int, interval: float, from_commit: bool
) -> list[float]:
    import psycopg

    app = procrastinate_app(dsn)
    await app.open_async()
    try:
        task = app.tasks["sleep"]
        ids = []
        for index in range(warmup + count):
            job_id = await task.defer_async(seconds=0)
            if index >= warmup:
                ids.append(job_id)
            await asyncio.sleep(interval)
    finally:
        await app.close_async()

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for _ in range(300):
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE id = ANY(%s) AND status = 'succeeded'", [ids]
            )
            if (await cursor.fetchone())[0] == len(ids):
                break
            await asyncio.sleep(0.1)
        # The "deferred" event row is never updated, so its xmin is the deferring transaction.
        deferred_at = "pg_xact_commit_timestamp(d.xmin)" if from_commit else "d.at"
        cursor = await conn.execute(
            f"""
            SELECT extract(epoch FROM s.at - {deferred_at})
            FROM procrastinate_events d JOIN procrastinate_events s
              ON s.job_id = d.job_id AND s.type = 'started'
            WHERE d.type = 'deferred' AND d.job_id = ANY(%s)
            """,
            [ids],
        )
        return [float(row[0]) for row in await cursor.fetchall()]


def procrastinate_pickup(args: argparse.Namespace) -> dict[str, Any]:
    with server_for_commit_times() as from_commit, benchmark_database("benchproc", migrated=False) as url:
        dsn = asyncpg_dsn(url)
        asyncio.run(procrastinate_enqueue(dsn, 0, 0))
        worker = start_anchor_worker("procrastinate-worker", "procrastinate", "worker", "--dsn", dsn,
                                     "--concurrency", "10")
        try:
            time.sleep(2.0)
            worker.check_alive()
            latencies = asyncio.run(
                procrastinate_pickup_run(dsn, args.count, args.warmup, args.interval, from_commit)
            )
        finally:
            worker.stop()
    return {"separate": summarize_ms(latencies), "count": args.count, "interval_seconds": args.interval,
            "measured_from": "commit" if from_commit else "insert"}


# --- arq ----------------------------------------------------------------------------------


async def arq_sleep(_ctx: dict[str, Any], seconds: float) -> None:
    if seconds:
        await asyncio.sleep(seconds)


def arq_redis_settings() -> Any:
    from arq.connections import RedisSettings

    return RedisSettings(host=REDIS_HOST, port=REDIS_PORT, database=REDIS_DATABASE)


async def arq_worker(queue: str, max_jobs: int, burst: bool) -> None:
    from arq.worker import Worker, func

    worker = Worker(
        functions=[func(arq_sleep, name="sleep")],
        redis_settings=arq_redis_settings(),
        queue_name=queue,
        max_jobs=max_jobs,
        poll_delay=ARQ_POLL_DELAY_SECONDS,
        burst=burst,
        handle_signals=True,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    report_peak_rss()


async def arq_enqueue(queue: str, prefix: str, jobs: int, seconds: float) -> None:
    from arq import create_pool

    redis = await create_pool(arq_redis_settings())
    try:
        for first in range(0, jobs, 500):
            await asyncio.gather(*(
                redis.enqueue_job("sleep", seconds, _job_id=f"{prefix}-{index}", _queue_name=queue)
                for index in range(first, min(jobs, first + 500))
            ))
    finally:
        await redis.aclose()


async def arq_results(queue: str, prefix: str, job_ids: list[str]) -> list[Any]:
    from arq import create_pool
    from arq.jobs import Job

    redis = await create_pool(arq_redis_settings())
    try:
        results = []
        for first in range(0, len(job_ids), 500):
            batch = job_ids[first:first + 500]
            infos = await asyncio.gather(*(Job(job_id, redis, _queue_name=queue).result_info() for job_id in batch))
            results.extend(info for info in infos if info is not None)
        return results
    finally:
        await redis.aclose()


async def arq_cleanup(queue: str, prefix: str) -> None:
    """Delete the benchmark's keys: its queue and every key that carries its job id prefix."""
    from arq import create_pool

    redis = await create_pool(arq_redis_settings())
    try:
        keys = [key async for key in redis.scan_iter(match=f"*{prefix}*", count=1000)]
        for first in range(0, len(keys), 1000):
            await redis.delete(*keys[first:first + 1000])
        await redis.delete(queue)
    finally:
        await redis.aclose()


def arq_drain(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}"
    queue = f"arq:queue:{prefix}"
    job_ids = [f"{prefix}-{index}" for index in range(args.tasks)]
    try:
        asyncio.run(arq_enqueue(queue, prefix, args.tasks, args.execution_time))
        worker = start_anchor_worker("arq-worker", "arq", "worker", "--queue", queue,
                                     "--concurrency", str(args.concurrency), "--burst")
        wait_for_exit(worker, args.timeout)
        results = asyncio.run(arq_results(queue, prefix, job_ids))
    finally:
        asyncio.run(arq_cleanup(queue, prefix))
    done = sum(1 for result in results if result.success)
    span = (max(r.finish_time for r in results) - min(r.start_time for r in results)).total_seconds()
    return drain_result(args, done, span, read_peak_rss(worker))


async def arq_pickup_run(queue: str, prefix: str, count: int, warmup: int, interval: float) -> list[float]:
    from arq import create_pool

    redis = await create_pool(arq_redis_settings())
    job_ids = []
    try:
        for index in range(warmup + count):
            job = await redis.enqueue_job("sleep", 0, _job_id=f"{prefix}-{index}", _queue_name=queue)
            if index >= warmup:
                job_ids.append(job.job_id)
            await asyncio.sleep(interval)
    finally:
        await redis.aclose()
    for _ in range(300):
        results = await arq_results(queue, prefix, job_ids)
        if len(results) == len(job_ids):
            break
        await asyncio.sleep(0.1)
    return [(result.start_time - result.enqueue_time).total_seconds() for result in results]


def arq_pickup(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}"
    queue = f"arq:queue:{prefix}"
    worker = start_anchor_worker("arq-worker", "arq", "worker", "--queue", queue, "--concurrency", "10")
    try:
        time.sleep(1.0)
        worker.check_alive()
        latencies = asyncio.run(arq_pickup_run(queue, prefix, args.count, args.warmup, args.interval))
    finally:
        worker.stop()
        asyncio.run(arq_cleanup(queue, prefix))
    return {"separate": summarize_ms(latencies), "count": args.count, "interval_seconds": args.interval}


# --- shared -------------------------------------------------------------------------------


def drain_result(args: argparse.Namespace, done: int, span: float, peak_rss: float | None) -> dict[str, Any]:
    return {
        "tasks": args.tasks,
        "execution_time": args.execution_time,
        "concurrency": args.concurrency,
        "completed": done,
        "span_seconds": round(span, 3),
        "tasks_per_second": round(args.tasks / span, 1) if span else None,
        "peak_rss_mb": peak_rss,
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="JSON file to write (default: bench/results/<name>-<time>.json)")
    systems = parser.add_subparsers(dest="system", required=True)
    for system in ("procrastinate", "arq"):
        commands = systems.add_parser(system).add_subparsers(dest="command", required=True)
        drain = commands.add_parser("drain", help="enqueue N jobs, then one worker process runs them all")
        drain.add_argument("--tasks", type=int, default=10_000)
        drain.add_argument("--execution-time", type=float, default=0.0, help="seconds each job sleeps")
        drain.add_argument("--concurrency", type=int, default=100, help="jobs one worker runs at once")
        drain.add_argument("--timeout", type=float, default=300.0)
        pickup = commands.add_parser("pickup", help="latency from enqueue to start with an idle worker")
        pickup.add_argument("--count", type=int, default=200)
        pickup.add_argument("--warmup", type=int, default=10)
        pickup.add_argument("--interval", type=float, default=0.05, help="seconds between two enqueues")
        worker = commands.add_parser("worker", help="internal: the worker process")
        worker.add_argument("--dsn")
        worker.add_argument("--queue")
        worker.add_argument("--concurrency", type=int, default=10)
        worker.add_argument("--no-wait", action="store_true", help="Procrastinate: stop once the queue is empty")
        worker.add_argument("--burst", action="store_true", help="arq: stop once the queue is empty")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.command == "worker":
        # SIGTERM from the parent stops the worker gracefully in both libraries.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.system == "procrastinate":
            asyncio.run(procrastinate_worker(args.dsn, args.concurrency, wait=not args.no_wait))
        else:
            asyncio.run(arq_worker(args.queue, args.concurrency, burst=args.burst))
        return

    commands = {
        ("procrastinate", "drain"): procrastinate_drain,
        ("procrastinate", "pickup"): procrastinate_pickup,
        ("arq", "drain"): arq_drain,
        ("arq", "pickup"): arq_pickup,
    }
    result = commands[(args.system, args.command)](args)
    if args.command == "drain":
        print_table(
            f"{args.system}: drain of {args.tasks:,} jobs of {args.execution_time} s (one worker process)",
            ["completed", "span s", "jobs/s", "peak RSS MB"],
            [[result["completed"], result["span_seconds"], result["tasks_per_second"], result["peak_rss_mb"]]],
        )
    else:
        latency = result["separate"]
        print_table(
            f"{args.system}: pickup latency, {args.count} jobs {args.interval * 1000:.0f} ms apart",
            ["worker", "p50 ms", "p95 ms", "p99 ms", "max ms"],
            [["separate", latency["p50_ms"], latency["p95_ms"], latency["p99_ms"], latency["max_ms"]]],
        )
    path = write_result(f"{args.system}-{args.command}",
                        {"system": args.system, "arguments": {k: str(v) for k, v in vars(args).items()},
                         "result": result}, args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
