"""PostgreSQL down at start-up and restarted mid-run, with the API and a worker as real processes.

Each test runs its own PostgreSQL cluster (tests/pgcluster.py), because stopping the shared
test server would break every other test. While the database is down the API must respond to
each request within a few seconds with a JSON 503 that browsers can read (CORS headers). Once
the database is back, the API and the workers must recover without a restart.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import migrate
from tests.pgcluster import PgCluster
from tests.processes import ApiProcess, Process, WorkerProcess

pytestmark = pytest.mark.slow

DASHBOARD = "http://localhost:3000"
ORIGIN = {"Origin": DASHBOARD}
# A response slower than this while the database is down counts as a hang.
MAX_ANSWER_SECONDS = 5.0
# Recovery limits: /health within 30 s of the database appearing, API calls within 10 s of a restart.
HEALTH_RECOVERY_LIMIT_SECONDS = 30.0
API_RECOVERY_LIMIT_SECONDS = 10.0
PROCESS_ENV = {
    "LEASE_SECONDS": "10",
    "WORKER_POLL_INTERVAL_SECONDS": "0.5",
    "RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "RETRY_BACKOFF_MAX_SECONDS": "0.3",
    "SHUTDOWN_GRACE_SECONDS": "1",
    "LOG_LEVEL": "INFO",
}
TASK = {"type": "processing", "failure_rate": 0}


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
async def cluster_url(cluster: PgCluster) -> str:
    url = await cluster.create_database("outage_" + uuid.uuid4().hex[:8])
    migrate(url)
    return url


def stop_all(processes: list[Process]) -> list[int | None]:
    return [process.stop() for process in processes]


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Call condition until it is true; return the seconds it took, or fail after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def status_of(url: str, path: str) -> int:
    try:
        return httpx.get(f"{url}{path}", timeout=MAX_ANSWER_SECONDS).status_code
    except httpx.TransportError:
        return 0


def check_unavailable_response(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert elapsed < MAX_ANSWER_SECONDS
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]
    assert response.headers["access-control-allow-origin"] == DASHBOARD
    assert "Traceback" not in response.text


def request_while_down(url: str) -> list[tuple[httpx.Response, float]]:
    """Send the dashboard's requests to an API whose database is down; return responses and durations."""
    requests = [
        ("GET", "/health", None),
        ("GET", "/tasks/", None),
        ("GET", "/tasks/1", None),
        ("GET", "/tasks/1/logs", None),
        ("POST", "/tasks/", {"name": "while down", **TASK, "execution_time": 0.1}),
        ("POST", "/tasks/1/cancel", None),
        ("DELETE", "/tasks/1", None),
        ("GET", "/metrics", None),
    ]
    responses = []
    for method, path, body in requests:
        started = time.monotonic()
        response = httpx.request(method, f"{url}{path}", json=body, headers=ORIGIN, timeout=MAX_ANSWER_SECONDS * 2)
        responses.append((response, time.monotonic() - started))
    return responses


def create_task(url: str, name: str, execution_time: float) -> dict:
    response = httpx.post(f"{url}/tasks/", json={"name": name, **TASK, "execution_time": execution_time}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def list_all(url: str) -> list[dict]:
    tasks: list[dict] = []
    for offset in range(0, 10_000, 200):
        page = httpx.get(f"{url}/tasks/", params={"limit": 200, "offset": offset}, timeout=10).json()
        tasks += page["items"]
        if len(page["items"]) < 200:
            break
    return tasks


def all_finished(url: str, expected: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            counts = httpx.get(f"{url}/tasks/", params={"limit": 1}, timeout=5).json()["counts"]
        except (httpx.TransportError, KeyError, ValueError):
            return False
        return counts["completed"] + counts["failed"] == expected

    return check


def completion_counts(url: str, task_ids: list[int]) -> dict[int, int]:
    counts = {}
    for task_id in task_ids:
        logs = httpx.get(f"{url}/tasks/{task_id}/logs", timeout=10).json()
        counts[task_id] = sum(1 for line in logs if line["message"] == "completed")
    return counts


async def test_service_starts_while_database_is_down(cluster: PgCluster, cluster_url: str, tmp_path: Path) -> None:
    cluster.stop()
    env = {**PROCESS_ENV, "DATABASE_URL": cluster_url}
    api = ApiProcess(env, tmp_path / "api.log").start()
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        api.wait_until_serving()
        time.sleep(2)
        responses = request_while_down(api.url)
        alive_while_down = worker.popen is not None and worker.popen.poll() is None

        cluster.start()
        health_recovery = poll(lambda: status_of(api.url, "/health") == 200, HEALTH_RECOVERY_LIMIT_SECONDS)
        task = create_task(api.url, "after start-up", 0.2)
        worker_recovery = health_recovery + poll(all_finished(api.url, 1), 20)
        final = httpx.get(f"{api.url}/tasks/{task['id']}", timeout=5).json()
    finally:
        exit_codes = stop_all([api, worker])

    print(f"\nstart-up while down: /health 200 after {health_recovery:.2f} s, first task done after {worker_recovery:.2f} s")
    for response, elapsed in responses:
        check_unavailable_response(response, elapsed)
    assert alive_while_down
    assert health_recovery < HEALTH_RECOVERY_LIMIT_SECONDS
    assert final["status"] == "completed"
    assert exit_codes[1] == 0
    assert "could not claim tasks" in worker.output() or "could not listen" in worker.output()
    assert "Traceback" not in api.output()


async def test_database_restart_mid_run_loses_nothing(cluster: PgCluster, cluster_url: str, tmp_path: Path) -> None:
    env = {**PROCESS_ENV, "DATABASE_URL": cluster_url, "WORKER_CONCURRENCY": "10"}
    api = ApiProcess(env, tmp_path / "api.log").start()
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        api.wait_until_serving()
        long_task = create_task(api.url, "long run across the restart", 5)
        before = [create_task(api.url, f"before {n}", 0.5 + n % 4 * 0.5) for n in range(30)]
        poll(lambda: httpx.get(f"{api.url}/tasks/{long_task['id']}", timeout=5).json()["status"] == "running", 10)

        cluster.stop()
        stopped_at = time.monotonic()
        responses = request_while_down(api.url)
        time.sleep(max(0.0, 3 - (time.monotonic() - stopped_at)))
        cluster.start()
        api_recovery = poll(lambda: status_of(api.url, "/tasks/") == 200, API_RECOVERY_LIMIT_SECONDS + 5, 0.1)
        health_recovery = poll(lambda: status_of(api.url, "/health") == 200, HEALTH_RECOVERY_LIMIT_SECONDS) + api_recovery

        restarted_at = time.monotonic()
        after = [create_task(api.url, f"after {n}", 0.2) for n in range(10)]
        total = 1 + len(before) + len(after)
        poll(all_finished(api.url, total), 60)
        drained = time.monotonic() - restarted_at
        tasks = list_all(api.url)
        completions = completion_counts(api.url, [task["id"] for task in tasks])
        long_logs = httpx.get(f"{api.url}/tasks/{long_task['id']}/logs", timeout=5).json()
    finally:
        exit_codes = stop_all([api, worker])

    print(
        f"\ndatabase restart: API 200 after {api_recovery:.2f} s, /health 200 after {health_recovery:.2f} s, "
        f"all {total} tasks done {drained:.2f} s after the restart"
    )
    for response, elapsed in responses:
        check_unavailable_response(response, elapsed)
    assert api_recovery < API_RECOVERY_LIMIT_SECONDS
    assert len(tasks) == total
    assert {task["status"] for task in tasks} == {"completed"}
    assert set(completions.values()) == {1}
    assert [line["message"] for line in long_logs][-1] == "completed"
    assert exit_codes[1] == 0
    assert "Traceback" not in api.output()
