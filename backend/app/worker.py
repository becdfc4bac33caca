"""The worker: claims due tasks, runs them as coroutines, records results, retries and leases.

One Worker runs per process, inside the API (started by its lifespan) or alone with
`python -m app.worker`. Any number of them can share one database: claims use
FOR UPDATE SKIP LOCKED, and every result is written only while the run's lease is valid.
"""

import asyncio
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import crud, metrics
from app.crud import ClaimedRun, RunFailure, RunSuccess
from app.db import create_engine
from app.handlers import HANDLERS, SimulatedFailure
from app.logs import configure_logging
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Errors that mean "the database is unreachable or went away"; the worker waits and retries.
DATABASE_ERRORS = (SQLAlchemyError, DBAPIError, OperationalError, OSError, asyncpg.PostgresError)

# Results written per statement; larger batches wait for the next flush.
FLUSH_BATCH_SIZE = 2000
# Pause after a failed database call, doubled up to the maximum while failures continue.
DATABASE_RETRY_SECONDS = 0.5
DATABASE_RETRY_MAX_SECONDS = 5.0
# Tries to write the last results while stopping before giving up on them.
SHUTDOWN_WRITE_TRIES = 3


def compute_retry_delay(settings: Settings, failed_runs: int) -> float:
    """Exponential backoff with +-20 % jitter: about base, 2 x base, 4 x base... up to the cap."""
    delay = settings.retry_backoff_base_seconds * 2 ** max(failed_runs - 1, 0)
    jittered = delay * random.uniform(0.8, 1.2)
    return min(jittered, settings.retry_backoff_max_seconds)


def heartbeat_interval(settings: Settings) -> float:
    """Seconds between two lease renewals and heartbeats of a worker."""
    return min(settings.lease_seconds / 3, 5.0)


def heartbeat_stale_after(settings: Settings) -> float:
    """Age after which no worker is considered alive: three missed heartbeats."""
    return 3 * heartbeat_interval(settings) + 1


class Worker:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.id = uuid.uuid4()
        self._engine = engine
        self._settings = settings
        # Strong references to every run coroutine, so none is garbage-collected mid-run.
        # A run keeps its slot until its result is written, which bounds memory and leases.
        self._runs: dict[int, tuple[ClaimedRun, asyncio.Task[None] | None]] = {}
        self._results: list[RunSuccess | RunFailure] = []
        # Slots held for claims made by requests of this process (reserve_slot, adopt), and
        # the limit of the claim loop's statement in flight: both count as busy slots.
        self._reserved_slots = 0
        self._claim_limit_in_flight = 0
        self._results_ready = asyncio.Event()
        self._wake_event = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # The LISTEN connection (asyncpg) and the SQLAlchemy connection that owns it. Claims
        # go over it too: a pool checkout pings the server first, which put one more round
        # trip between a task's commit and its claim.
        self._listener: asyncpg.Connection | None = None
        self._listener_connection: AsyncConnection | None = None
        self._listener_lost = asyncio.Event()
        self._flush_task: asyncio.Task[None] | None = None
        # Set by stop(): the flush loop writes what is left and then returns.
        self._closing = False

    # --- public ---------------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        return len(self._runs)

    def wake(self) -> None:
        """Make the claim loop look for due tasks now (a task was created in this process)."""
        self._wake_event.set()

    def reserve_slot(self) -> bool:
        """Hold a run slot for a task that a request of this process will claim for this worker.

        Return False while stopping or when every slot is taken. A True must be followed by
        adopt(), with the runs claimed or none, which gives the slot back.
        """
        if self._stopping:
            return False
        busy_slots = len(self._runs) + self._reserved_slots + self._claim_limit_in_flight
        if busy_slots >= self._settings.worker_concurrency:
            return False
        self._reserved_slots += 1
        return True

    async def adopt(self, runs: list[ClaimedRun]) -> None:
        """Run tasks that a request claimed for this worker, in the slot reserve_slot() held."""
        self._reserved_slots -= 1
        metrics.TASKS_STARTED.inc(len(runs))
        if self._stopping:
            # stop() may already have released its runs, so release these the same way.
            await self._release(runs)
            return
        for run in runs:
            self._start_run(run)

    async def run(self) -> None:
        """Claim and run tasks until stop() is called."""
        logger.info(
            "worker started",
            extra={"event": "worker_started", "worker_id": str(self.id), "concurrency": self._settings.worker_concurrency},
        )
        self._flush_task = self._spawn(self._flush_loop())
        self._spawn(self._maintenance_loop())
        self._spawn(self._listen_loop())
        try:
            await self._claim_loop()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop claiming, let running tasks finish within the grace period, release the rest."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.wake()
        await self._stopped.wait()
        logger.info(
            "worker stopping",
            extra={"event": "worker_stopping", "worker_id": str(self.id), "running": len(self._runs)},
        )

        await self._wait_for_runs(self._settings.shutdown_grace_seconds)
        unfinished = await self._cancel_runs()
        await self._drain_results()
        await self._release(unfinished)

        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._close_listener()
        await self._unregister()
        logger.info("worker stopped", extra={"event": "worker_stopped", "worker_id": str(self.id)})

    # --- claiming and running -------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            # Clear before claiming: a wake-up that arrives during the claim is kept.
            self._wake_event.clear()
            free_slots = self._settings.worker_concurrency - len(self._runs) - self._reserved_slots
            limit = min(free_slots, self._settings.worker_batch_size)
            claimed: list[ClaimedRun] = []
            if limit > 0:
                try:
                    claimed = await self._claim(limit)
                    failures = 0
                except DATABASE_ERRORS as exc:
                    failures += 1
                    await self._pause_after_database_error("claim tasks", exc, failures)
                    continue

            for run in claimed:
                self._start_run(run)

            if claimed and len(claimed) == limit:
                # A full batch: more tasks are probably due. Let the runs start first.
                await asyncio.sleep(0)
                continue
            await self._wait_for_wake(self._settings.worker_poll_interval_seconds)

    async def _claim(self, limit: int) -> list[ClaimedRun]:
        self._claim_limit_in_flight = limit
        try:
            return await self._claim_due_tasks(limit)
        finally:
            self._claim_limit_in_flight = 0

    async def _claim_due_tasks(self, limit: int) -> list[ClaimedRun]:
        started = time.perf_counter()
        if self._listener is None:
            # The listener is reconnecting: claim over a pooled connection meanwhile.
            async with self._engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                claimed = await crud.claim_tasks(
                    driver, worker_id=self.id, limit=limit, lease_seconds=self._settings.lease_seconds
                )
        else:
            # A dead connection fails this claim and ends the listener, which reconnects.
            claimed = await crud.claim_tasks(
                self._listener, worker_id=self.id, limit=limit, lease_seconds=self._settings.lease_seconds
            )
        metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
        metrics.TASKS_STARTED.inc(len(claimed))
        return claimed

    async def _wait_for_wake(self, timeout: float) -> None:
        # asyncio.timeout wakes this coroutine directly; wait_for would add a task and
        # with it one more event-loop pass before the claim starts.
        try:
            async with asyncio.timeout(timeout):
                await self._wake_event.wait()
        except TimeoutError:
            pass

    def _start_run(self, run: ClaimedRun) -> None:
        logger.info(
            "task started",
            extra={
                "event": "started",
                "task_id": run.task_id,
                "attempt": run.attempt,
                "status": "running",
                "worker_id": str(self.id),
            },
        )
        task = asyncio.create_task(self._execute(run), name=f"task-{run.task_id}-run-{run.attempt}")
        self._runs[run.task_id] = (run, task)

    async def _execute(self, run: ClaimedRun) -> None:
        started = time.perf_counter()
        try:
            handler = HANDLERS.get(run.type)
            if handler is None:
                raise LookupError(f"no handler is registered for task type {run.type!r}")
            await handler(run)
        except asyncio.CancelledError:
            # Cancelled by stop() or because the task was cancelled or taken over: the caller
            # decides what happens to the task, so no result is recorded here.
            raise
        except Exception as exc:
            slept = time.perf_counter() - started
            self._record_failure(run, exc, slept)
        else:
            slept = time.perf_counter() - started
            metrics.RUN_SECONDS.observe(slept)
            self._results.append(RunSuccess(run=run, slept_seconds=slept))
            self._results_ready.set()
        finally:
            entry = self._runs.get(run.task_id)
            if entry is not None and entry[0] is run:
                # The slot stays taken until the result is written; only drop the coroutine.
                self._runs[run.task_id] = (run, None)

    def _record_failure(self, run: ClaimedRun, exc: Exception, slept: float) -> None:
        error = str(exc) if isinstance(exc, SimulatedFailure) else f"{type(exc).__name__}: {exc}"
        delay = compute_retry_delay(self._settings, run.attempt)
        log_args = {
            "event": "failed",
            "task_id": run.task_id,
            "attempt": run.attempt,
            "status": "running",
            "error": error,
        }
        if isinstance(exc, SimulatedFailure):
            logger.warning("task run failed: %s", error, extra=log_args)
        else:
            logger.warning("task run failed: %s", error, extra=log_args, exc_info=exc)
        metrics.RUN_SECONDS.observe(slept)
        self._results.append(RunFailure(run=run, error=error, retry_delay_seconds=delay, slept_seconds=slept))
        self._results_ready.set()

    # --- writing results ------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            while self._results:
                batch = self._results[:FLUSH_BATCH_SIZE]
                del self._results[:FLUSH_BATCH_SIZE]
                try:
                    await self._write_results(batch)
                    failures = 0
                except DATABASE_ERRORS as exc:
                    # Keep the results: they are written once the database is back, while
                    # the leases of their runs keep being renewed.
                    self._results[:0] = batch
                    failures += 1
                    if self._closing and failures >= SHUTDOWN_WRITE_TRIES:
                        logger.error(
                            "%d task results could not be recorded before shutdown; "
                            "their tasks return to the queue when the lease expires",
                            len(self._results),
                            extra={"event": "results_lost"},
                        )
                        return
                    await self._pause_after_database_error("record task results", exc, failures)
            if self._closing:
                return

    async def _drain_results(self) -> None:
        """Let the flush loop write every result that is left, then end it."""
        self._closing = True
        self._results_ready.set()
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)

    async def _write_results(self, batch: list[RunSuccess | RunFailure]) -> None:
        successes = [item for item in batch if isinstance(item, RunSuccess)]
        failures = [item for item in batch if isinstance(item, RunFailure)]

        async with self._engine.begin() as conn:
            completed = await crud.complete_runs(conn, successes)
            failed = await crud.fail_runs(conn, failures)

        discarded = [
            item.run for item in batch if item.run.task_id not in completed and item.run.task_id not in failed
        ]
        if discarded:
            await self._log_discarded(discarded, "the task was cancelled or its lease passed to another worker")

        for item in successes:
            if item.run.task_id in completed:
                self._log_success(item)
        for item in failures:
            status = failed.get(item.run.task_id)
            if status is not None:
                self._log_failure_outcome(item, status)

        for item in batch:
            self._runs.pop(item.run.task_id, None)
        self.wake()

    def _log_success(self, item: RunSuccess) -> None:
        metrics.TASKS_COMPLETED.inc()
        logger.info(
            "task completed",
            extra={
                "event": "succeeded",
                "task_id": item.run.task_id,
                "attempt": item.run.attempt,
                "status": "completed",
                "duration_seconds": round(item.slept_seconds, 3),
            },
        )

    def _log_failure_outcome(self, item: RunFailure, status: str) -> None:
        fields = {"task_id": item.run.task_id, "attempt": item.run.attempt, "status": status}
        if status == "pending":
            metrics.TASKS_RETRIED.inc()
            logger.warning(
                "task retry scheduled in %.1f s",
                item.retry_delay_seconds,
                extra={"event": "retry_scheduled", **fields},
            )
            # Come back when the retry is due instead of waiting for the next poll.
            asyncio.get_running_loop().call_later(item.retry_delay_seconds, self.wake)
        else:
            metrics.TASKS_FAILED.inc()
            logger.error(
                "task failed for good after %d runs: %s",
                item.run.attempt,
                item.error,
                extra={"event": "retries_exhausted", **fields},
            )

    async def _log_discarded(self, runs: list[ClaimedRun], reason: str) -> None:
        for run in runs:
            logger.warning(
                "result of task run discarded: %s",
                reason,
                extra={"event": "result_discarded", "task_id": run.task_id, "attempt": run.attempt},
            )
        try:
            async with self._engine.begin() as conn:
                await crud.log_discarded_results(conn, runs, reason)
        except DATABASE_ERRORS:
            logger.exception("could not write the discarded-result log lines", extra={"event": "log_failed"})

    # --- leases, recovery, heartbeat ------------------------------------------------------

    @property
    def _maintenance_interval(self) -> float:
        return heartbeat_interval(self._settings)

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                await self._renew_leases()
                await self._recover_lost_runs()
                async with self._engine.begin() as conn:
                    await crud.record_worker_heartbeat(
                        conn, worker_id=self.id, hostname=socket.gethostname(), pid=os.getpid()
                    )
                    await crud.prune_workers(conn, older_than_seconds=max(60.0, 10 * self._settings.lease_seconds))
            except DATABASE_ERRORS as exc:
                logger.warning(
                    "lease renewal or recovery failed, retrying in %.1f s: %s",
                    self._maintenance_interval,
                    exc,
                    extra={"event": "maintenance_failed"},
                )
            await asyncio.sleep(self._maintenance_interval)

    async def _renew_leases(self) -> None:
        runs_by_token = {run.lease_token: run for run, _ in self._runs.values()}
        if not runs_by_token:
            return
        async with self._engine.begin() as conn:
            valid = await crud.renew_leases(
                conn, worker_id=self.id, tokens=list(runs_by_token), lease_seconds=self._settings.lease_seconds
            )
        lost = [run for token, run in runs_by_token.items() if token not in valid]
        self._abandon_runs(lost, "its lease is no longer held (cancelled or taken over)")

    def _abandon_runs(self, runs: Iterable[ClaimedRun], reason: str) -> None:
        """Stop runs whose task this worker no longer owns; nothing of theirs will be written.

        A run that already finished keeps its slot: the flush that follows finds its lease
        gone and logs the discarded result, so each superseded run is logged once.
        """
        stopped: list[ClaimedRun] = []
        for run in runs:
            entry = self._runs.get(run.task_id)
            if entry is None or entry[0].lease_token != run.lease_token:
                continue
            task = entry[1]
            if task is not None:
                task.cancel()
                del self._runs[run.task_id]
                stopped.append(run)
            logger.info(
                "task run abandoned: %s",
                reason,
                extra={"event": "run_abandoned", "task_id": run.task_id, "attempt": run.attempt},
            )
        if stopped:
            self._spawn(self._log_discarded(stopped, reason))
        self.wake()

    async def _recover_lost_runs(self) -> None:
        async with self._engine.begin() as conn:
            recovered = await crud.recover_lost_runs(
                conn, retry_delay_seconds=compute_retry_delay(self._settings, 1)
            )
        for row in recovered:
            metrics.TASKS_RECOVERED.inc()
            logger.warning(
                "task recovered after a lost worker",
                extra={
                    "event": "recovered",
                    "task_id": row["id"],
                    "attempt": row["attempts"],
                    "status": row["status"],
                },
            )
        if recovered:
            asyncio.get_running_loop().call_later(self._settings.retry_backoff_max_seconds, self.wake)
            self.wake()

    # --- LISTEN/NOTIFY --------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """Keep a LISTEN connection so that tasks created by other processes wake this worker.

        The claim loop also polls, so a notification lost while this reconnects only delays
        a task by one poll interval.
        """
        failures = 0
        while True:
            try:
                await self._open_listener()
                failures = 0
                logger.info("listening for new tasks", extra={"event": "listener_connected"})
                # Tasks created while the listener was away are found by this claim.
                self.wake()
                await self._listener_lost.wait()
                logger.warning("listener connection lost, reconnecting", extra={"event": "listener_lost"})
            except DATABASE_ERRORS as exc:
                failures += 1
                await self._pause_after_database_error("listen for new tasks", exc, failures)
            finally:
                await self._close_listener()

    async def _open_listener(self) -> None:
        """Check a connection out of the pool for good, LISTEN on it and claim over it.

        It stays out of the pool, so an idle process keeps DB_POOL_SIZE pooled connections
        plus this one, as it did with a separate LISTEN connection.
        """
        connection = await self._engine.connect()
        try:
            listener = (await connection.get_raw_connection()).driver_connection
            self._listener_lost.clear()
            listener.add_termination_listener(lambda _conn: self._listener_lost.set())
            await listener.add_listener("tasks_pending", self._on_tasks_pending)
            await listener.add_listener("task_cancelled", self._on_task_cancelled)
        except BaseException:
            await connection.invalidate()
            raise
        self._listener = listener
        self._listener_connection = connection

    def _on_tasks_pending(self, *_args: object) -> None:
        self.wake()

    def _on_task_cancelled(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            task_id = int(payload)
        except ValueError:
            return
        entry = self._runs.get(task_id)
        if entry is not None:
            self._abandon_runs([entry[0]], "the task was cancelled")

    async def _close_listener(self) -> None:
        """Close the LISTEN connection for good; it never returns to the pool with its LISTENs."""
        listener, self._listener = self._listener, None
        connection, self._listener_connection = self._listener_connection, None
        if connection is None:
            return
        try:
            await asyncio.wait_for(connection.invalidate(), 2)
        except (TimeoutError, *DATABASE_ERRORS):
            if listener is not None:
                listener.terminate()

    # --- stopping -------------------------------------------------------------------------

    async def _wait_for_runs(self, timeout: float) -> None:
        tasks = [task for _, task in self._runs.values() if task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _cancel_runs(self) -> list[ClaimedRun]:
        unfinished = [(run, task) for run, task in self._runs.values() if task is not None and not task.done()]
        for _, task in unfinished:
            task.cancel()
        await asyncio.gather(*(task for _, task in unfinished), return_exceptions=True)
        for run, _ in unfinished:
            self._runs.pop(run.task_id, None)
        return [run for run, _ in unfinished]

    async def _release(self, runs: list[ClaimedRun]) -> None:
        if not runs:
            return
        try:
            async with self._engine.begin() as conn:
                released = await crud.release_runs(conn, runs, "the worker stopped before the run finished")
        except DATABASE_ERRORS:
            logger.exception(
                "could not return %d unfinished tasks to the queue; they return after the lease expires",
                len(runs),
                extra={"event": "release_failed"},
            )
            return
        for run in runs:
            if run.task_id in released:
                logger.info(
                    "task returned to the queue",
                    extra={"event": "released", "task_id": run.task_id, "attempt": run.attempt, "status": "pending"},
                )

    async def _unregister(self) -> None:
        try:
            async with self._engine.begin() as conn:
                await crud.remove_worker(conn, self.id)
        except DATABASE_ERRORS:
            logger.warning("could not remove the worker's heartbeat row", extra={"event": "unregister_failed"})

    # --- helpers --------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._on_background_done)
        return task

    def _on_background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "worker loop %s crashed",
                task.get_name(),
                exc_info=task.exception(),
                extra={"event": "loop_crashed"},
            )

    async def _pause_after_database_error(self, action: str, exc: BaseException, failures: int) -> None:
        delay = min(DATABASE_RETRY_SECONDS * 2 ** (failures - 1), DATABASE_RETRY_MAX_SECONDS)
        logger.warning(
            "could not %s, retrying in %.1f s: %s",
            action,
            delay,
            exc,
            extra={"event": "database_error", "failures": failures},
        )
        await asyncio.sleep(delay)


async def run_standalone(settings: Settings) -> None:
    """Run one worker until SIGTERM or SIGINT, then stop it gracefully."""
    engine = create_engine(settings)
    worker = Worker(engine, settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)

    run_task = asyncio.create_task(worker.run())
    await stop_requested.wait()
    await worker.stop()
    await run_task
    await engine.dispose()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    asyncio.run(run_standalone(settings))


if __name__ == "__main__":
    main()
