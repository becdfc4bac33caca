"""Failures seen in other task runners, checked against ours with real PostgreSQL and real processes.

Tests that start the API as a uvicorn subprocess (with its in-process worker) talk to it over
loopback HTTP and read its log file. The others use the in-process app and worker fixtures.
"""

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil  # installed with pgserver from requirements-dev.txt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.tasks import current_settings
from app.main import app
from app.schemas import NAME_MAX_LENGTH
from app.settings import Settings, get_settings
from app.worker import Worker
from tests.conftest import wait_until
from tests.processes import ApiProcess

ORIGIN = "http://localhost:3000"
TERMINAL = {"completed", "failed", "cancelled"}
# Seconds the worker of an API process waits for running tasks when the process stops.
SHUTDOWN_GRACE_SECONDS = "1"
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
# Lines that asyncio or SQLAlchemy print when a coroutine or a session is mishandled.
ASYNC_MISUSE_PATTERNS = (
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "another operation is in progress",
    "MissingGreenlet",
    "IllegalStateChangeError",
    "InterfaceError",
    "coroutine .* was never awaited",
)


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Start API processes, each with its worker, on free ports. Teardown stops them by pid."""
    started: list[ApiProcess] = []

    def start(**env: str) -> ApiProcess:
        api = ApiProcess(
            {"SHUTDOWN_GRACE_SECONDS": SHUTDOWN_GRACE_SECONDS, "LOG_LEVEL": "INFO", **env},
            tmp_path / f"api-{len(started) + 1}.log",
        )
        started.append(api)
        api.start()
        api.wait_until_serving()
        return api

    yield start
    for api in started:
        api.stop()


def http_client(api: ApiProcess, **kwargs: Any) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    return httpx.AsyncClient(base_url=api.url, timeout=10.0, limits=limits, **kwargs)


async def gather_limited(factories: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the coroutine factories with at most limit of them in flight, like `xargs -P limit`."""
    semaphore = asyncio.Semaphore(limit)

    async def run(factory: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await factory()

    return await asyncio.gather(*(run(factory) for factory in factories))


async def list_all_tasks(client: httpx.AsyncClient, page_size: int = 50) -> list[dict[str, Any]]:
    """Walk every page of GET /tasks/ until an empty page, and fail on any page that is not a 200."""
    tasks: list[dict[str, Any]] = []
    for page in range(1000):
        response = await client.get("/tasks/", params={"limit": page_size, "offset": page * page_size})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if not items:
            return tasks
        tasks.extend(items)
    raise AssertionError("GET /tasks/ returned more than 1000 pages")


async def wait_for_status(
    client: httpx.AsyncClient, task_id: int, statuses: set[str], timeout: float
) -> dict[str, Any]:
    task: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal task
        task = (await client.get(f"/tasks/{task_id}")).json()
        return task["status"] in statuses

    await wait_until(reached, timeout=timeout, what=f"task {task_id} to become {' or '.join(sorted(statuses))}")
    return task


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def expected_log_lines(task: dict[str, Any]) -> list[tuple[int, str]]:
    """Build the (attempt, message pattern) sequence a finished task's log must show, oldest first."""
    runs = task["attempts"] + 1 if task["status"] == "completed" else task["attempts"]
    lines = [(0, r"task created")]
    for run in range(1, runs + 1):
        lines.append((run, rf"run {run} started"))
        lines.append((run, rf"run {run} slept \d+\.\d\d s"))
        if task["status"] == "completed" and run == runs:
            lines.append((run, r"completed"))
            continue
        lines.append((run, rf"run {run} failed: .+"))
        if run < runs:
            lines.append((run, r"retry scheduled at \S+Z \(in \d+\.\d s\)"))
        else:
            lines.append((run, rf"failed for good after {run} runs"))
    return lines


def assert_complete_log(task: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    """Check that the log shows every transition of the task once, in order, with no gaps."""
    expected = expected_log_lines(task)
    actual = [(line["attempt"], line["message"]) for line in lines]
    assert len(actual) == len(expected), f"task {task['id']} ({task['status']}): log {actual}"
    for (attempt, pattern), (line_attempt, message) in zip(expected, actual, strict=True):
        assert line_attempt == attempt, f"task {task['id']}: {message!r} has attempt {line_attempt}"
        assert re.fullmatch(pattern, message), f"task {task['id']}: {message!r} does not match {pattern!r}"
    times = [parse_time(line["created_at"]) for line in lines]
    assert times == sorted(times), f"task {task['id']}: log times out of order"


def find_misuse_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if any(re.search(p, line) for p in ASYNC_MISUSE_PATTERNS)]


async def count_tasks_in_database(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT count(*) FROM tasks"))).scalar_one()


def create_body(name: str = "field-case", execution_time: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "notification", "execution_time": execution_time, **extra}


# --- tasks run to the end as tracked coroutines -------------------------------------------------


async def test_create_burst_all_finish(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    rng = random.Random(20261204)
    bodies = [
        {
            "name": f"burst-{number}",
            "type": "processing" if number % 2 else "notification",
            "execution_time": 2,
            # A fifth of the tasks fail now and then, so retries run during the burst too.
            "failure_rate": 0.5 if number % 5 == 0 else 0.0,
        }
        for number in range(1, 201)
    ]

    async with http_client(api) as client:
        created = await gather_limited(
            [lambda body=body: client.post("/tasks", json=body) for body in bodies], limit=50
        )
        assert [response.status_code for response in created] == [201] * 200

        async def all_terminal() -> bool:
            return all(task["status"] in TERMINAL for task in await list_all_tasks(client))

        await wait_until(all_terminal, timeout=60, interval=2, what="all 200 tasks to finish")
        tasks = {task["id"]: task for task in await list_all_tasks(client)}
        sampled = rng.sample(sorted(tasks), 10)
        logs = {task_id: (await client.get(f"/tasks/{task_id}/logs")).json() for task_id in sampled}

    assert len(tasks) == 200
    assert {task["status"] for task in tasks.values()} <= {"completed", "failed"}
    never_failing = [task for task in tasks.values() if task["failure_rate"] == 0]
    assert all(task["status"] == "completed" for task in never_failing)
    for task_id in sampled:
        assert_complete_log(tasks[task_id], logs[task_id])
    api.stop()
    assert find_misuse_lines(api.output()) == []


# --- the event loop stays free while tasks run ---------------------------------------------------


async def test_create_answers_before_run_finishes(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    # Plain requests, then requests that make every middleware work (CORS, request id).
    header_sets = [{}, {"Origin": ORIGIN, "X-Request-ID": "create-timing"}]

    async with http_client(api) as client:
        await client.get("/tasks/")
        for headers in header_sets:
            started = time.perf_counter()
            response = await client.post("/tasks", json=create_body("long", 10), headers=headers)
            elapsed = time.perf_counter() - started

            assert response.status_code == 201
            assert elapsed < 0.5, f"POST /tasks took {elapsed:.3f} s with headers {headers}"
            assert response.json()["status"] in ("pending", "running")
            await client.post(f"/tasks/{response.json()['id']}/cancel")


async def test_reads_stay_fast_while_task_runs(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()

    async with http_client(api) as client:
        task_id = (await client.post("/tasks", json=create_body("long", 10))).json()["id"]
        await wait_for_status(client, task_id, {"running"}, timeout=5)
        slow: list[str] = []
        statuses: set[str] = set()
        for _ in range(20):
            for path in ("/tasks", f"/tasks/{task_id}"):
                started = time.perf_counter()
                response = await client.get(path)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200
                if elapsed >= 0.3:
                    slow.append(f"GET {path}: {elapsed:.3f} s")
            statuses.add(response.json()["status"])
        await client.post(f"/tasks/{task_id}/cancel")

    assert slow == []
    assert statuses == {"running"}


async def test_tasks_run_concurrently(start_api: Callable[..., ApiProcess]) -> None:
    api = start_api()
    execution_time = 2.0

    async with http_client(api) as client:
        started = time.perf_counter()
        created = await asyncio.gather(
            *(client.post("/tasks", json=create_body(f"parallel-{n}", execution_time)) for n in range(10))
        )
        ids = [response.json()["id"] for response in created]

        async def all_completed() -> bool:
            tasks = (await client.get("/tasks/", params={"status": "completed"})).json()["items"]
            return len(tasks) == 10

        await wait_until(all_completed, timeout=20, interval=0.1, what="10 tasks to complete")
        elapsed = time.perf_counter() - started
        tasks = [(await client.get(f"/tasks/{task_id}")).json() for task_id in ids]

    # Serial runs would need 10 x 2 s, but concurrent runs need one execution_time plus overhead.
    assert elapsed < execution_time + 2.5, f"10 tasks of {execution_time} s took {elapsed:.1f} s"
    latest_start = max(parse_time(task["started_at"]) for task in tasks)
    earliest_finish = min(parse_time(task["finished_at"]) for task in tasks)
    assert latest_start < earliest_finish, "some runs did not overlap"


# --- execution_time bounds ------------------------------------------------------------------------


async def test_execution_time_rejects_invalid_values(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    maximum = settings.max_execution_time
    wrong = ["-5", "-0.001", "true", "null", '"5"', '"abc"', "[]", "{}", None]
    too_large = ["2147483648", "100000000000000000000", "9223372036854775808", json.dumps(maximum + 1)]
    before = await count_tasks_in_database(engine)

    for value in [*wrong, *too_large]:
        member = "" if value is None else f', "execution_time": {value}'
        body = f'{{"name": "bounds", "type": "notification"{member}}}'.encode()
        response = await client.post("/tasks", content=body, headers={"Content-Type": "application/json"})

        assert response.status_code == 422, f"execution_time {value}: {response.status_code} {response.text}"
        messages = [error["msg"] for error in response.json()["detail"]]
        assert any(message.startswith("execution_time") for message in messages), f"{value}: {messages}"
        if value in too_large:
            assert any(str(maximum) in message for message in messages), f"{value}: {messages}"

    assert await count_tasks_in_database(engine) == before
    assert (await client.get("/tasks/")).status_code == 200


async def test_execution_time_accepts_zero_and_maximum(
    client: httpx.AsyncClient, worker: Worker, engine: AsyncEngine, settings: Settings
) -> None:
    before = await count_tasks_in_database(engine)

    instant = await client.post("/tasks", json=create_body("instant", 0))
    longest = await client.post("/tasks", json=create_body("longest", settings.max_execution_time))
    control = await client.post("/tasks", json=create_body("control", 1))

    assert [instant.status_code, longest.status_code, control.status_code] == [201, 201, 201]
    assert await count_tasks_in_database(engine) == before + 3
    await wait_for_status(client, instant.json()["id"], {"completed"}, timeout=5)
    finished = await wait_for_status(client, control.json()["id"], {"completed"}, timeout=5)
    slept = parse_time(finished["finished_at"]) - parse_time(finished["started_at"])
    assert slept.total_seconds() >= 1.0, f"the 1 s control task ran {slept.total_seconds():.3f} s"

    longest_id = longest.json()["id"]
    assert (await client.get(f"/tasks/{longest_id}")).json()["status"] == "running"
    listed = await client.get("/tasks/")
    assert listed.status_code == 200
    assert listed.json()["counts"]["running"] == 1

    await client.post(f"/tasks/{longest_id}/cancel")

    async def run_abandoned() -> bool:
        return worker.running_count == 0

    await wait_until(run_abandoned, timeout=5, what="the worker to drop the cancelled run")


# --- names: Unicode, control characters, lengths ---------------------------------------------------

ACCEPTED_NAMES = [
    "📦 Отчёт №1 — 数据处理 ✅ مرحبا",
    "e\u0301",
    "zero\u200bwidth",
    "<img src=x onerror=alert(1)>",
    "n" * NAME_MAX_LENGTH,
]


async def test_names_round_trip_unchanged(client: httpx.AsyncClient, worker: Worker) -> None:
    ids: dict[int, str] = {}
    for name in ACCEPTED_NAMES:
        response = await client.post("/tasks", json=create_body(name, 0.1))
        assert response.status_code == 201, f"{name!r}: {response.text}"
        ids[response.json()["id"]] = name

    for task_id, name in ids.items():
        task = await wait_for_status(client, task_id, {"completed"}, timeout=5)
        assert task["name"] == name
        assert len(task["name"]) == len(name)
        logs = await client.get(f"/tasks/{task_id}/logs")
        assert logs.status_code == 200
        assert logs.json()[-1]["message"] == "completed"
    listed = {item["id"]: item["name"] for item in (await client.get("/tasks/")).json()["items"]}
    assert listed == ids


async def test_invalid_names_never_cause_server_error(
    client: httpx.AsyncClient, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    names = {
        "empty": '""',
        "spaces": '"   "',
        "tab and newline": '"\\t\\n"',
        "over max length": json.dumps("n" * (NAME_MAX_LENGTH + 1)),
        "100 000 characters": json.dumps("n" * 100_000),
        "NUL": '"a\\u0000b"',
        "lone surrogate": '"\\ud800"',
    }
    before = await count_tasks_in_database(engine)
    outcomes: dict[str, int] = {}

    for label, name in names.items():
        body = f'{{"type": "notification", "execution_time": 1, "name": {name}}}'.encode()
        response = await client.post("/tasks", content=body, headers={"Content-Type": "application/json"})
        outcomes[label] = response.status_code

    allowed = {label: (413, 422) if label == "100 000 characters" else (422,) for label in names}
    wrong = {label: status for label, status in outcomes.items() if status not in allowed[label]}
    assert wrong == {}, f"unexpected status codes: {wrong}"
    assert await count_tasks_in_database(engine) == before
    assert (await client.get("/tasks/")).status_code == 200
    errors = [record.getMessage() for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]
    assert errors == []


# --- concurrent reads and status writes share the pool safely --------------------------------------


def count_api_connections(api: ApiProcess, database: str, activity: list[asyncpg.Record]) -> int:
    """Count the server sessions on database whose client socket belongs to the API process."""
    ports = {conn.laddr.port for conn in psutil.Process(api.pid).net_connections(kind="inet") if conn.raddr}
    return sum(1 for row in activity if row["datname"] == database and row["client_port"] in ports)


async def read_activity(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await connection.fetch(
            "SELECT datname, state, client_port FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()


async def test_concurrent_reads_during_status_writes(
    start_api: Callable[..., ApiProcess], database_url: str, engine: AsyncEngine
) -> None:
    pool_size = get_settings().db_pool_size
    api = start_api(DB_POOL_SIZE=str(pool_size))
    database = engine.url.database
    codes: list[int] = []
    peak_connections = 0

    async with http_client(api) as client:
        created = await gather_limited(
            [lambda n=n: client.post("/tasks", json=create_body(f"load-{n}", 1)) for n in range(30)], limit=30
        )
        codes += [response.status_code for response in created]
        ids = [response.json()["id"] for response in created if response.status_code == 201]
        running = await wait_for_status(client, ids[0], {"running"}, timeout=2)

        for _ in range(5):
            reads = [lambda: client.get("/tasks")] * 100
            reads += [lambda task_id=task_id: client.get(f"/tasks/{task_id}/logs") for task_id in (ids * 2)[:50]]
            responses = await gather_limited(reads, limit=50)
            codes += [response.status_code for response in responses]
            activity = await read_activity(database_url)
            peak_connections = max(peak_connections, count_api_connections(api, database, activity))
            counts = (await client.get("/tasks")).json()["counts"]
            if counts["pending"] == 0 and counts["running"] == 0:
                break

        async def all_terminal() -> bool:
            return all(task["status"] in TERMINAL for task in await list_all_tasks(client))

        await wait_until(all_terminal, timeout=15, interval=0.2, what="30 tasks to finish")
        finished = (await client.get(f"/tasks/{ids[0]}")).json()
        tasks = {task["id"]: task for task in await list_all_tasks(client)}
        logs = {task_id: (await client.get(f"/tasks/{task_id}/logs")).json() for task_id in ids}
        await asyncio.sleep(1)
        idle_activity = await read_activity(database_url)

    assert [code for code in codes if code >= 500] == []
    for response in created:
        body = response.json()
        assert isinstance(body["id"], int)
        assert body["status"] in ("pending", "running")
        assert body["created_at"] is not None
        assert body["updated_at"] is not None
        assert "started_at" in body
        assert "finished_at" in body
    assert running["started_at"] is not None
    assert running["finished_at"] is None
    assert finished["status"] == "completed"
    assert parse_time(finished["started_at"]) <= parse_time(finished["finished_at"])
    assert {task["status"] for task in tasks.values()} == {"completed"}
    for task_id in ids:
        assert_complete_log(tasks[task_id], logs[task_id])
    assert find_misuse_lines(api.output()) == []
    idle_in_transaction = [row for row in idle_activity if row["datname"] == database and "transaction" in row["state"]]
    assert idle_in_transaction == []
    # The pool keeps pool_size connections and opens as many again under load. LISTEN takes one more.
    assert peak_connections <= 2 * pool_size + 1
    # Overflow connections close when they return to a full pool; give their server sessions
    # a moment to end before counting what stays open.
    async def back_to_pool_size() -> bool:
        return count_api_connections(api, database, await read_activity(database_url)) <= pool_size + 1

    await wait_until(back_to_pool_size, timeout=10, interval=0.5, what="API connections back to the pool size")


# --- trailing slashes and CORS -------------------------------------------------------------------


@pytest.fixture
async def token_client(client: httpx.AsyncClient) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The in-process client, with API_TOKEN required on mutating requests."""
    token = "field-case-token"
    app.dependency_overrides[current_settings] = lambda: get_settings().model_copy(update={"api_token": token})
    try:
        yield client, token
    finally:
        app.dependency_overrides.pop(current_settings, None)


@pytest.mark.parametrize("path", ["/tasks", "/tasks/"])
async def test_preflight_allows_post_on_both_forms(client: httpx.AsyncClient, path: str) -> None:
    response = await client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization, idempotency-key",
        },
    )

    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    for header in ("content-type", "authorization", "idempotency-key"):
        assert header in allowed_headers


async def test_no_path_redirects(client: httpx.AsyncClient) -> None:
    task_id = (await client.post("/tasks/", json=create_body("slash"))).json()["id"]
    pairs = [
        ("/tasks", "/tasks/"),
        (f"/tasks/{task_id}", f"/tasks/{task_id}/"),
        (f"/tasks/{task_id}/logs", f"/tasks/{task_id}/logs/"),
        ("/health", "/health/"),
        ("/metrics", "/metrics/"),
    ]

    for documented, other in pairs:
        first = await client.get(documented, headers={"Origin": ORIGIN})
        second = await client.get(other, headers={"Origin": ORIGIN})

        assert not 300 <= first.status_code < 400, f"GET {documented} redirected to {first.headers.get('location')}"
        assert not 300 <= second.status_code < 400, f"GET {other} redirected to {second.headers.get('location')}"
        assert first.status_code in (200, 503), f"GET {documented}: {first.status_code}"
        assert second.status_code in (first.status_code, 404), f"GET {other}: {second.status_code}"
        assert first.headers.get("access-control-allow-origin") == ORIGIN
        assert second.headers.get("access-control-allow-origin") == ORIGIN


@pytest.mark.parametrize("path", ["/tasks", "/tasks/"])
async def test_create_with_token_needs_no_redirect(
    token_client: tuple[httpx.AsyncClient, str], path: str
) -> None:
    client, token = token_client
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {token}"}

    created = await client.post(path, json=create_body("slash"), headers=headers)
    refused = await client.post(path, json=create_body("slash"), headers={"Origin": ORIGIN})

    assert created.status_code == 201, created.text
    assert created.headers["access-control-allow-origin"] == ORIGIN
    assert created.headers["location"] == f"/tasks/{created.json()['id']}"
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN


# --- timestamps -------------------------------------------------------------------------------------


def assert_utc_timestamps(task: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    for field in ("created_at", "updated_at", "run_at", "started_at", "finished_at"):
        assert ISO_UTC.match(task[field]), f"{field} = {task[field]!r} has no UTC offset"
    for line in lines:
        assert ISO_UTC.match(line["created_at"]), f"log time {line['created_at']!r} has no UTC offset"


async def test_timestamps_are_utc_and_match_the_run(client: httpx.AsyncClient, worker: Worker) -> None:
    execution_time = 1.5

    created = await client.post("/tasks", json=create_body("clock", execution_time))
    task = await wait_for_status(client, created.json()["id"], {"completed"}, timeout=10)
    lines = (await client.get(f"/tasks/{task['id']}/logs")).json()

    assert_utc_timestamps(task, lines)
    age = datetime.now(UTC) - parse_time(task["created_at"])
    assert abs(age.total_seconds()) < 5 + execution_time
    ran = (parse_time(task["finished_at"]) - parse_time(task["started_at"])).total_seconds()
    assert abs(ran - execution_time) <= 1.0, f"ran {ran:.3f} s for execution_time {execution_time}"


@pytest.fixture
async def new_york_database(engine: AsyncEngine, database_url: str) -> AsyncIterator[None]:
    """Make new sessions on the test database use America/New_York, as PGTZ would."""
    database = engine.url.database
    async with engine.begin() as conn:
        await conn.execute(text(f'ALTER DATABASE "{database}" SET timezone TO \'America/New_York\''))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'ALTER DATABASE "{database}" RESET timezone'))
        # Sessions pooled meanwhile keep New York time, so close them.
        await engine.dispose()


async def test_timestamps_ignore_process_and_session_time_zones(
    start_api: Callable[..., ApiProcess], new_york_database: None, engine: AsyncEngine, database_url: str
) -> None:
    probe = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await probe.fetchval("SHOW timezone") == "America/New_York"
    finally:
        await probe.close()
    api = start_api(TZ="Asia/Tokyo", PGTZ="America/New_York")
    execution_time = 1.5

    async with http_client(api) as client:
        created = await client.post("/tasks", json=create_body("tokyo", execution_time))
        retried = await client.post("/tasks", json=create_body("retried", 0.1, failure_rate=1))
        assert created.status_code == 201
        assert retried.status_code == 201
        task = await wait_for_status(client, created.json()["id"], {"completed"}, timeout=10)
        failed = await wait_for_status(client, retried.json()["id"], {"failed"}, timeout=10)
        lines = (await client.get(f"/tasks/{task['id']}/logs")).json()
        failed_lines = (await client.get(f"/tasks/{failed['id']}/logs")).json()

    assert_utc_timestamps(task, lines)
    assert_utc_timestamps(failed, failed_lines)
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT created_at, started_at, finished_at FROM tasks WHERE id = :id"), {"id": task["id"]}
            )
        ).mappings().one()
    for field in ("created_at", "started_at", "finished_at"):
        assert parse_time(task[field]) == stored[field], f"{field}: API {task[field]} vs database {stored[field]}"
    age = datetime.now(UTC) - parse_time(task["created_at"])
    assert abs(age.total_seconds()) < 5 + execution_time
    ran = (parse_time(task["finished_at"]) - parse_time(task["started_at"])).total_seconds()
    assert abs(ran - execution_time) <= 1.0
    # The retry time written into the log is UTC too: it lies just after the line's own time.
    for line in failed_lines:
        match = re.match(r"retry scheduled at (\S+Z)", line["message"])
        if match:
            gap = (parse_time(match.group(1)) - parse_time(line["created_at"])).total_seconds()
            assert -0.1 <= gap <= 5, f"retry time {match.group(1)} vs log time {line['created_at']}"
    output = api.output()
    assert "offset-naive" not in output
    assert "Traceback" not in output


# --- pagination -------------------------------------------------------------------------------------


async def insert_tied_tasks(engine: AsyncEngine, count: int, prefix: str) -> None:
    """Insert count pending tasks in one transaction, so that all share one created_at."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tasks (name, type, execution_time, max_attempts) "
                "SELECT :prefix || n, 'notification', 1, 3 FROM generate_series(1, :count) AS n"
            ),
            {"prefix": prefix, "count": count},
        )


async def walk_pages_by_cursor(
    client: httpx.AsyncClient, page_size: int, between_pages: Callable[[], Awaitable[None]]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, int] = {"limit": page_size}
    for _ in range(1000):
        response = await client.get("/tasks/", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        if body["next_before"] is None:
            return items
        params = {"limit": page_size, "before": body["next_before"]}
        await between_pages()
    raise AssertionError("more than 1000 pages")


async def walk_pages(
    client: httpx.AsyncClient, page_size: int, between_pages: Callable[[], Awaitable[None]] | None = None
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in range(1000):
        response = await client.get("/tasks/", params={"limit": page_size, "offset": page * page_size})
        assert response.status_code == 200, response.text
        assert response.json()["limit"] == page_size
        assert response.json()["offset"] == page * page_size
        if not response.json()["items"]:
            return items
        items.extend(response.json()["items"])
        if between_pages is not None:
            await between_pages()
    raise AssertionError("more than 1000 pages")


async def create_many(client: httpx.AsyncClient, count: int, prefix: str) -> None:
    responses = await gather_limited(
        [lambda n=n: client.post("/tasks/", json=create_body(f"{prefix}{n}")) for n in range(count)], limit=20
    )
    assert [response.status_code for response in responses] == [201] * count


async def test_pages_return_every_row_once(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await create_many(client, 250, "page-")
    await insert_tied_tasks(engine, 100, "tied-")

    first = await walk_pages(client, 20)
    second = await walk_pages(client, 20)

    first_ids = [item["id"] for item in first]
    assert len(first_ids) == 350
    assert len(set(first_ids)) == 350
    assert [item["id"] for item in second] == first_ids
    tied = [item for item in first if item["name"].startswith("tied-")]
    assert len({item["created_at"] for item in tied}) == 1
    # Newest first means descending ids: ids grow with each insert and never tie.
    assert first_ids == sorted(first_ids, reverse=True)


async def test_page_walk_repeats_no_row_while_tasks_arrive(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await insert_tied_tasks(engine, 100, "tied-")
    originals = {item["id"] for item in await walk_pages(client, 20)}
    added: list[int] = []

    async def create_one() -> None:
        if len(added) < 5:
            response = await client.post("/tasks/", json=create_body(f"late-{len(added)}"))
            added.append(response.json()["id"])

    walked = [item["id"] for item in await walk_pages_by_cursor(client, 20, between_pages=create_one)]
    fresh = [item["id"] for item in await walk_pages(client, 20)]

    repeated = sorted({task_id for task_id in walked if walked.count(task_id) > 1})
    assert repeated == [], f"ids returned twice during one walk: {repeated}"
    assert originals <= set(walked)
    assert fresh[:5] == sorted(added, reverse=True)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "1000000"},
        {"offset": "-1"},
        {"offset": "2147483648"},
        {"page": "abc"},
        {"size": "1e3"},
        {"limit": "1e3"},
        {"offset": "1e3"},
    ],
    ids=lambda params: "-".join(f"{key}={value}" for key, value in params.items()),
)
async def test_list_handles_extreme_page_parameters(
    client: httpx.AsyncClient, engine: AsyncEngine, params: dict[str, str]
) -> None:
    await insert_tied_tasks(engine, 5, "edge-")

    response = await client.get("/tasks/", params=params)

    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        body = response.json()
        assert 1 <= body["limit"] <= 200
        assert body["offset"] >= 0
        assert len(body["items"]) <= body["limit"]
    else:
        field = next(iter(params))
        assert any(error["msg"].startswith(field) for error in response.json()["detail"])


async def test_default_page_is_bounded_and_fast(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await insert_tied_tasks(engine, 10_000, "bulk-")
    await client.get("/tasks/")

    started = time.perf_counter()
    response = await client.get("/tasks/")
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed < 0.5, f"GET /tasks/ over 10 000 rows took {elapsed:.3f} s"
    assert response.json()["total"] == 10_000
    assert len(response.json()["items"]) == response.json()["limit"]
    assert response.json()["limit"] <= 200
