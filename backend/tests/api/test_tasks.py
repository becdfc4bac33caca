"""HTTP routes of /tasks against the app in this process."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import crud
from app.main import app
from app.settings import get_settings
from app.worker import Worker
from tests.conftest import wait_until

TASK_BODY = {"name": "Send report", "type": "notification", "execution_time": 1}
DASHBOARD = "http://localhost:3000"


async def create(client: httpx.AsyncClient, **fields: object) -> dict:
    response = await client.post("/tasks/", json={**TASK_BODY, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def set_status(engine: AsyncEngine, task_id: int, status: str) -> None:
    """Move a task through allowed transitions only, so the trigger accepts it."""
    steps = {
        "running": ["running"],
        "completed": ["running", "completed"],
        "failed": ["running", "failed"],
        "cancelled": ["cancelled"],
    }[status]
    async with engine.begin() as conn:
        for step in steps:
            lease = (
                "lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 minute'"
                if step == "running"
                else "lease_token = NULL, lease_expires_at = NULL"
            )
            await conn.execute(text(f"UPDATE tasks SET status = :s, {lease} WHERE id = :id"), {"s": step, "id": task_id})


async def test_create_returns_pending_task_with_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/", json=TASK_BODY)

    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"/tasks/{task['id']}"
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["max_attempts"] == 3
    assert task["failure_rate"] == 0
    assert task["created_at"].endswith("Z")
    assert task["updated_at"].endswith("Z")
    assert task["started_at"] is None
    assert task["finished_at"] is None


async def test_create_answers_without_slash_too(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json=TASK_BODY)

    assert response.status_code == 201


async def test_long_task_create_answers_at_once(client: httpx.AsyncClient, worker: Worker) -> None:
    started = time.perf_counter()
    response = await client.post("/tasks/", json={**TASK_BODY, "execution_time": 5})
    elapsed = time.perf_counter() - started

    assert response.status_code == 201
    assert elapsed < 1.0
    task_id = response.json()["id"]
    current = (await client.get(f"/tasks/{task_id}")).json()
    assert current["status"] in ("pending", "running")
    await client.post(f"/tasks/{task_id}/cancel")


async def test_task_runs_to_completed_with_logs(client: httpx.AsyncClient, worker: Worker) -> None:
    task = await create(client, execution_time=0.3)

    async def is_completed() -> bool:
        return (await client.get(f"/tasks/{task['id']}")).json()["status"] == "completed"

    await wait_until(is_completed, timeout=10, what="task completed")
    done = (await client.get(f"/tasks/{task['id']}")).json()
    logs = (await client.get(f"/tasks/{task['id']}/logs")).json()
    assert done["attempts"] == 0
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert [line["message"] for line in logs] == ["task created", "run 1 started", "run 1 slept 0.30 s", "completed"]


async def status_in_database(engine: AsyncEngine, task_id: int) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT status FROM tasks WHERE id = :id"), {"id": task_id})).scalar_one()


async def has_status(engine: AsyncEngine, task_id: int, status: str) -> bool:
    return await status_in_database(engine, task_id) == status


async def wait_out_start_up(engine: AsyncEngine) -> None:
    """Wait until a task inserted now has completed, so the worker's start-up claim is over.

    That claim could otherwise take the task that a test creates next.
    """
    async with engine.begin() as conn:
        task_id = (
            await conn.execute(
                text(
                    "INSERT INTO tasks (name, type, execution_time, max_attempts) "
                    "VALUES ('warm-up', 'notification', 0, 1) RETURNING id"
                )
            )
        ).scalar_one()
    await wait_until(lambda: has_status(engine, task_id, "completed"), timeout=10, what="warm-up task completed")


@contextlib.asynccontextmanager
async def in_process_worker(engine: AsyncEngine, concurrency: int) -> AsyncIterator[Worker]:
    """A worker of the app in this process with the given number of run slots."""
    worker = Worker(engine, get_settings().model_copy(update={"worker_concurrency": concurrency}))
    app.state.worker = worker
    run = asyncio.create_task(worker.run())
    try:
        await wait_out_start_up(engine)
        yield worker
    finally:
        await worker.stop()
        await run
        app.state.worker = None


async def test_create_claims_for_local_worker(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    await wait_out_start_up(engine)
    claimed_by_loop: list[int] = []
    claim_tasks = crud.claim_tasks

    async def recording_claim_tasks(*args: object, **kwargs: object) -> list[crud.ClaimedRun]:
        runs = await claim_tasks(*args, **kwargs)
        claimed_by_loop.extend(run.task_id for run in runs)
        return runs

    monkeypatch.setattr(crud, "claim_tasks", recording_claim_tasks)

    task = await create(client, execution_time=2)

    assert task["status"] == "pending"
    assert await status_in_database(engine, task["id"]) == "running"
    assert worker.running_count == 1
    assert claimed_by_loop == []
    await client.post(f"/tasks/{task['id']}/cancel")


async def test_create_with_busy_slots_stays_pending(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    async with in_process_worker(engine, concurrency=1):
        first = await create(client, execution_time=0.5)
        second = await create(client, execution_time=0)

        assert await status_in_database(engine, first["id"]) == "running"
        assert await status_in_database(engine, second["id"]) == "pending"

        async def second_completed() -> bool:
            return await status_in_database(engine, second["id"]) == "completed"

        await wait_until(second_completed, timeout=10, what="second task completed after the first")


async def test_refused_create_frees_reserved_slot(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    settings = get_settings()
    original = settings.max_pending_tasks
    async with in_process_worker(engine, concurrency=1):
        settings.max_pending_tasks = 0
        try:
            for _ in range(3):
                assert (await client.post("/tasks/", json=TASK_BODY)).status_code == 429
        finally:
            settings.max_pending_tasks = original

        task = await create(client, execution_time=2)

        # A slot kept by a refused create would leave this one pending.
        assert await status_in_database(engine, task["id"]) == "running"
        await client.post(f"/tasks/{task['id']}/cancel")


async def test_failure_rate_one_fails_after_exactly_three_runs(client: httpx.AsyncClient, worker: Worker) -> None:
    task = await create(client, execution_time=0.05, failure_rate=1)

    async def is_failed() -> bool:
        return (await client.get(f"/tasks/{task['id']}")).json()["status"] == "failed"

    await wait_until(is_failed, timeout=15, what="task failed")
    done = (await client.get(f"/tasks/{task['id']}")).json()
    messages = [line["message"] for line in (await client.get(f"/tasks/{task['id']}/logs")).json()]
    assert done["attempts"] == 3
    assert done["last_error"] == "simulated failure (failure_rate=1)"
    assert [m for m in messages if m.endswith("started")] == ["run 1 started", "run 2 started", "run 3 started"]
    assert len([m for m in messages if m.startswith("retry scheduled at")]) == 2
    assert messages[-1] == "failed for good after 3 runs"


async def test_retry_waits_for_backoff(client: httpx.AsyncClient, worker: Worker) -> None:
    task = await create(client, execution_time=0, failure_rate=1)

    async def is_failed() -> bool:
        return (await client.get(f"/tasks/{task['id']}")).json()["status"] == "failed"

    await wait_until(is_failed, timeout=15, what="task failed")
    logs = (await client.get(f"/tasks/{task['id']}/logs")).json()
    starts = [line["created_at"] for line in logs if line["message"].endswith("started")]
    from datetime import datetime

    gaps = [
        (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
        for earlier, later in zip(starts, starts[1:], strict=False)
    ]
    base = get_settings().retry_backoff_base_seconds
    assert len(gaps) == 2
    assert gaps[0] >= base * 0.8
    assert gaps[1] >= min(base * 2 * 0.8, get_settings().retry_backoff_max_seconds * 0.8)


async def test_get_unknown_task_returns_404_naming_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/4242")

    assert response.status_code == 404
    assert "4242" in response.json()["detail"]


async def test_logs_of_unknown_task_return_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/4242/logs")

    assert response.status_code == 404


async def test_non_integer_id_returns_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/abc")

    assert response.status_code == 422


async def test_cancel_pending_task(client: httpx.AsyncClient) -> None:
    task = await create(client)

    response = await client.post(f"/tasks/{task['id']}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    logs = (await client.get(f"/tasks/{task['id']}/logs")).json()
    assert logs[-1]["message"] == "cancelled"


async def test_cancel_running_task_stops_its_run(client: httpx.AsyncClient, worker: Worker) -> None:
    task = await create(client, execution_time=30)

    async def is_running() -> bool:
        return (await client.get(f"/tasks/{task['id']}")).json()["status"] == "running"

    await wait_until(is_running, what="task running")
    response = await client.post(f"/tasks/{task['id']}/cancel")
    await wait_until(lambda: asyncio.sleep(0, worker.running_count == 0), what="run abandoned")

    assert response.status_code == 200
    assert (await client.get(f"/tasks/{task['id']}")).json()["status"] == "cancelled"


@pytest.mark.parametrize("final_status", ["completed", "failed", "cancelled"])
async def test_cancel_finished_task_returns_409(
    client: httpx.AsyncClient, engine: AsyncEngine, final_status: str
) -> None:
    task = await create(client)
    await set_status(engine, task["id"], final_status)

    response = await client.post(f"/tasks/{task['id']}/cancel")

    assert response.status_code == 409
    body = response.json()
    assert body["task_id"] == task["id"]
    assert body["status"] == final_status
    assert str(task["id"]) in body["detail"]
    assert final_status in body["detail"]


async def test_cancel_unknown_task_returns_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/999/cancel")

    assert response.status_code == 404


async def test_delete_finished_task_removes_it_and_its_logs(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    task = await create(client)
    await set_status(engine, task["id"], "completed")

    response = await client.delete(f"/tasks/{task['id']}")

    assert response.status_code == 204
    assert (await client.get(f"/tasks/{task['id']}")).status_code == 404
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM task_logs"))).scalar_one()
    assert left == 0


@pytest.mark.parametrize("current", ["pending", "running"])
async def test_delete_unfinished_task_returns_409(client: httpx.AsyncClient, engine: AsyncEngine, current: str) -> None:
    task = await create(client)
    if current != "pending":
        await set_status(engine, task["id"], current)

    response = await client.delete(f"/tasks/{task['id']}")

    assert response.status_code == 409
    assert response.json()["status"] == current
    assert (await client.get(f"/tasks/{task['id']}")).status_code == 200


async def test_list_is_newest_first_with_counts(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    first = await create(client, name="first")
    second = await create(client, name="second", type="processing")
    await set_status(engine, first["id"], "completed")

    body = (await client.get("/tasks/")).json()

    assert [item["name"] for item in body["items"]] == ["second", "first"]
    assert body["total"] == 2
    assert body["limit"] == 50
    assert body["offset"] == 0
    assert body["counts"] == {"pending": 1, "running": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert second["id"] > first["id"]


async def test_list_answers_without_slash(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks")

    assert response.status_code == 200


async def test_list_filters_by_status_type_and_name(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    report = await create(client, name="Weekly REPORT")
    await create(client, name="resize", type="processing")
    failed = await create(client, name="report 100%_done", type="processing")
    await set_status(engine, failed["id"], "failed")

    by_status = (await client.get("/tasks/", params=[("status", "pending"), ("status", "failed")])).json()
    by_type = (await client.get("/tasks/", params={"type": "processing"})).json()
    by_name = (await client.get("/tasks/", params={"q": "report"})).json()
    by_wildcard = (await client.get("/tasks/", params={"q": "100%_"})).json()
    combined = (await client.get("/tasks/", params={"q": "report", "status": "pending"})).json()

    assert by_status["total"] == 3
    assert {item["name"] for item in by_type["items"]} == {"resize", "report 100%_done"}
    assert by_type["total"] == 2
    assert {item["name"] for item in by_name["items"]} == {"Weekly REPORT", "report 100%_done"}
    assert [item["name"] for item in by_wildcard["items"]] == ["report 100%_done"]
    assert [item["id"] for item in combined["items"]] == [report["id"]]
    assert combined["total"] == 1
    assert combined["counts"]["failed"] == 1


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"limit": -1}, {"offset": -1}, {"offset": 2147483648}, {"status": "done"},
     {"type": "email"}, {"limit": "abc"}],
)
async def test_list_rejects_out_of_range_parameters(client: httpx.AsyncClient, params: dict) -> None:
    response = await client.get("/tasks/", params=params)

    assert response.status_code == 422
    field = next(iter(params))
    assert any(field in error["msg"] for error in response.json()["detail"])


async def test_idempotency_key_returns_the_same_task(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "form-submit-1"}

    first = await client.post("/tasks/", json=TASK_BODY, headers=headers)
    second = await client.post("/tasks/", json=TASK_BODY, headers=headers)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert (await client.get("/tasks/")).json()["total"] == 1


async def test_idempotency_key_with_other_body_returns_409(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "form-submit-2"}
    await client.post("/tasks/", json=TASK_BODY, headers=headers)

    response = await client.post("/tasks/", json={**TASK_BODY, "name": "other"}, headers=headers)

    assert response.status_code == 409
    assert "form-submit-2" in response.json()["detail"]
    assert (await client.get("/tasks/")).json()["total"] == 1


async def test_concurrent_idempotent_creates_make_one_task(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "double-click"}

    responses = await asyncio.gather(*(client.post("/tasks/", json=TASK_BODY, headers=headers) for _ in range(5)))

    assert {response.json()["id"] for response in responses} == {responses[0].json()["id"]}
    assert (await client.get("/tasks/")).json()["total"] == 1


async def test_create_beyond_pending_limit_returns_429(client: httpx.AsyncClient) -> None:
    settings = get_settings()
    original = settings.max_pending_tasks
    settings.max_pending_tasks = 2
    try:
        await create(client)
        await create(client)
        response = await client.post("/tasks/", json=TASK_BODY)
    finally:
        settings.max_pending_tasks = original

    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"
    assert "MAX_PENDING_TASKS" in response.json()["detail"]
    assert (await client.get("/tasks/")).json()["total"] == 2


async def test_api_token_required_for_changes_when_set(client: httpx.AsyncClient) -> None:
    settings = get_settings()
    settings.api_token = "secret-token"
    try:
        without = await client.post("/tasks/", json=TASK_BODY)
        wrong = await client.post("/tasks/", json=TASK_BODY, headers={"Authorization": "Bearer nope"})
        read = await client.get("/tasks/")
        right = await client.post("/tasks/", json=TASK_BODY, headers={"Authorization": "Bearer secret-token"})
    finally:
        settings.api_token = ""

    assert without.status_code == 401
    assert wrong.status_code == 401
    assert without.headers["www-authenticate"] == "Bearer"
    assert read.status_code == 200
    assert right.status_code == 201


async def test_cors_preflight_from_dashboard_is_allowed(client: httpx.AsyncClient) -> None:
    for path in ("/tasks", "/tasks/"):
        response = await client.options(
            path,
            headers={
                "Origin": DASHBOARD,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key",
            },
        )

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        assert "POST" in response.headers["access-control-allow-methods"]


async def test_cors_preflight_from_other_origin_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/tasks/",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_error_responses_carry_cors_headers(client: httpx.AsyncClient) -> None:
    missing = await client.get("/tasks/777", headers={"Origin": DASHBOARD})
    invalid = await client.post("/tasks/", json={"name": ""}, headers={"Origin": DASHBOARD})

    assert missing.headers["access-control-allow-origin"] == DASHBOARD
    assert invalid.headers["access-control-allow-origin"] == DASHBOARD


async def test_responses_carry_a_request_id(client: httpx.AsyncClient) -> None:
    generated = await client.get("/tasks/")
    forwarded = await client.get("/tasks/", headers={"X-Request-ID": "abc-123"})

    assert len(generated.headers["x-request-id"]) == 32
    assert forwarded.headers["x-request-id"] == "abc-123"


async def test_oversized_body_returns_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/", json={**TASK_BODY, "name": "x" * 70_000})

    assert response.status_code == 413
    assert "65536" in response.json()["detail"]


async def test_health_reports_worker_heartbeat(client: httpx.AsyncClient, worker: Worker) -> None:
    async def is_healthy() -> bool:
        return (await client.get("/health")).status_code == 200

    await wait_until(is_healthy, what="healthy")
    body = (await client.get("/health")).json()
    assert body == {"status": "ok", "database": "ok", "worker": "ok", "detail": None}


async def test_health_without_worker_is_503(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 503
    assert response.json()["worker"] == "stale"
    assert "heartbeat" in response.json()["detail"]


async def test_metrics_expose_counters_and_queue_depth(client: httpx.AsyncClient) -> None:
    await create(client)

    body = (await client.get("/metrics")).text

    assert "taskrunner_tasks_created_total" in body
    assert 'taskrunner_tasks{status="pending"} 1.0' in body
    assert "taskrunner_run_duration_seconds_bucket" in body


async def test_openapi_documents_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    create_body = spec["components"]["schemas"]["TaskCreateRequest"]
    assert create_body["examples"][0]["type"] == "notification"
    assert "/tasks/" in spec["paths"]
    assert "/tasks/{task_id}/cancel" in spec["paths"]


async def test_filtered_total_stops_at_count_limit(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tasks (name, type, execution_time, max_attempts) "
                "SELECT 'many', 'processing', 1, 3 FROM generate_series(1, :count)"
            ),
            {"count": crud.COUNT_LIMIT + 5},
        )

    searched = (await client.get("/tasks/", params={"q": "many", "limit": 1})).json()
    by_status = (await client.get("/tasks/", params={"status": "pending", "limit": 1})).json()

    assert searched["total"] == crud.COUNT_LIMIT
    assert searched["total_is_exact"] is False
    assert by_status["total"] == crud.COUNT_LIMIT + 5
    assert by_status["total_is_exact"] is True


async def test_swagger_ui_is_served_without_a_cdn(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    script = await client.get("/static-offline-docs/swagger-ui-bundle.js")

    assert page.status_code == 200
    assert "cdn.jsdelivr.net" not in page.text
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    assert script.status_code == 200
