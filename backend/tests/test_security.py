"""Security defaults of the API: hostile bodies, CORS without credentials, no secret in any output."""

import asyncio
import json
import secrets
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.conftest import migrate
from tests.pgcluster import PgCluster, free_port
from tests.processes import ApiProcess

JSON_HEADERS = {"Content-Type": "application/json"}
DASHBOARD = "http://localhost:3000"
VALID_BODY = b'{"name": "valid", "type": "notification", "execution_time": 1}'
# Deep enough to exhaust Python's recursion limit in json.loads, small enough to pass the 64 KB limit.
NESTING_DEPTH = 20_000


async def count_rows(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        tasks = (await conn.execute(text("SELECT count(*) FROM tasks"))).scalar_one()
        logs = (await conn.execute(text("SELECT count(*) FROM task_logs"))).scalar_one()
    return tasks, logs


def detail_text(response: httpx.Response) -> str:
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return detail
    return " ".join(str(error["msg"]) for error in detail)


NESTED_BODIES = {
    "list-as-body": b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH,
    "object-as-body": b'{"a":' * (NESTING_DEPTH // 2) + b"1" + b"}" * (NESTING_DEPTH // 2),
    "nested-name": b'{"name": ' + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b', "type": "notification", "execution_time": 1}',
    "nested-unknown-field": b'{"name": "n", "type": "notification", "execution_time": 1, "extra": '
    + b"[" * NESTING_DEPTH
    + b"]" * NESTING_DEPTH
    + b"}",
    "nested-shallow-object": b'{"name": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b', "type": "notification", "execution_time": 1}',
}


@pytest.mark.parametrize("body", list(NESTED_BODIES.values()), ids=list(NESTED_BODIES))
async def test_deeply_nested_json_is_rejected(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", content=body, headers=JSON_HEADERS)

    assert len(body) < 64 * 1024
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/json"
    assert detail_text(response)
    assert await count_rows(engine) == before


INVALID_UTF8_BODIES = {
    "lone-continuation-byte": b'{"name": "a\x80b", "type": "notification", "execution_time": 1}',
    "truncated-sequence": b'{"name": "caf\xc3", "type": "notification", "execution_time": 1}',
    "overlong-slash": b'{"name": "a\xc0\xafb", "type": "notification", "execution_time": 1}',
    "encoded-surrogate": b'{"name": "a\xed\xa0\x80b", "type": "notification", "execution_time": 1}',
    "invalid-byte-in-key": b'{"na\xffme": "a", "type": "notification", "execution_time": 1}',
    "latin1-declared-charset": '{"name": "café", "type": "notification", "execution_time": 1}'.encode("latin-1"),
}


@pytest.mark.parametrize("body", list(INVALID_UTF8_BODIES.values()), ids=list(INVALID_UTF8_BODIES))
async def test_invalid_utf8_body_is_rejected(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> None:
    before = await count_rows(engine)

    response = await client.post(
        "/tasks/", content=body, headers={"Content-Type": "application/json; charset=latin-1"}
    )

    assert response.status_code in (400, 422), response.text
    assert detail_text(response)
    assert await count_rows(engine) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "application/octet-stream"}, {"Content-Type": "text/json"}, {"Content-Type": "image/png"}],
    ids=["missing", "octet-stream", "text-json", "image-png"],
)
async def test_non_json_content_type_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]
) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", content=VALID_BODY, headers=headers)

    assert 400 <= response.status_code < 500, response.text
    assert detail_text(response)
    assert await count_rows(engine) == before


@pytest.mark.parametrize("search", ["\x00", "report\x00", "\x00' OR 1=1 --"])
async def test_search_with_nul_character_returns_422(client: httpx.AsyncClient, search: str) -> None:
    response = await client.get("/tasks/", params={"q": search})

    assert response.status_code == 422, response.text
    assert detail_text(response).startswith("q must not contain the NUL character")


@pytest.mark.parametrize("search", ["%", "_", "\\", "' OR 1=1 --", "<script>alert(1)</script>", "\u202e"])
async def test_search_treats_special_text_literally(client: httpx.AsyncClient, search: str) -> None:
    created = await client.post("/tasks/", json={"name": "plain name", "type": "notification", "execution_time": 1})

    response = await client.get("/tasks/", params={"q": search})

    assert created.status_code == 201
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


async def test_cors_never_allows_credentials(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/tasks/",
        headers={
            "Origin": DASHBOARD,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    simple = await client.get("/tasks/", headers={"Origin": DASHBOARD})
    refused = await client.get("/tasks/", headers={"Origin": "http://evil.localhost:3000"})

    for response in (preflight, simple):
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        assert "access-control-allow-credentials" not in response.headers
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-credentials" not in refused.headers


def test_settings_reject_wildcard_origin() -> None:
    with pytest.raises(ValidationError, match="CORS_ORIGINS must list origins explicitly"):
        Settings(cors_origins=["*"])


def test_api_refuses_to_start_with_wildcard_origin(database_url: str, tmp_path: Path) -> None:
    process = ApiProcess({"DATABASE_URL": database_url, "CORS_ORIGINS": '["*"]'}, tmp_path / "api.log").start()
    try:
        exit_code = process.wait(30)
    finally:
        process.stop()

    assert exit_code != 0
    assert "CORS_ORIGINS must list origins explicitly" in process.output()


def responses_text(responses: list[httpx.Response]) -> str:
    parts = []
    for response in responses:
        parts.append(response.text)
        parts.extend(f"{name}: {value}" for name, value in response.headers.items())
    return "\n".join(parts)


def exercise_api(url: str, token: str) -> list[httpx.Response]:
    """Send the requests whose responses could echo a secret: errors, auth failures, health, metrics."""
    auth = {"Authorization": f"Bearer {token}"}
    body = {"name": "secret check", "type": "notification", "execution_time": 0.1}
    responses = [
        httpx.post(f"{url}/tasks/", json=body, headers=auth, timeout=10),
        httpx.post(f"{url}/tasks/", json=body, timeout=10),
        httpx.post(f"{url}/tasks/", json=body, headers={"Authorization": "Bearer wrong"}, timeout=10),
        httpx.post(f"{url}/tasks/", json={"name": ""}, headers=auth, timeout=10),
        httpx.get(f"{url}/tasks/", timeout=10),
        httpx.get(f"{url}/tasks/987654", timeout=10),
        httpx.get(f"{url}/health", timeout=10),
        httpx.get(f"{url}/metrics", timeout=10),
        httpx.get(f"{url}/openapi.json", timeout=10),
    ]
    return responses


async def test_no_secret_in_logs_errors_or_health(tmp_path: Path) -> None:
    password = "pw-" + secrets.token_hex(12)
    wrong_password = "wrong-" + secrets.token_hex(12)
    token = "token-" + secrets.token_hex(12)
    responses: list[httpx.Response] = []
    with PgCluster(password=password) as cluster:
        database_url = await cluster.create_database("secrets")
        migrate(database_url)
        env = {"API_TOKEN": token, "LOG_LEVEL": "DEBUG", "LEASE_SECONDS": "3"}
        healthy = ApiProcess({**env, "DATABASE_URL": database_url}, tmp_path / "healthy.log").start()
        rejected = ApiProcess(
            {**env, "DATABASE_URL": database_url.replace(password, wrong_password)}, tmp_path / "rejected.log"
        ).start()
        unreachable = ApiProcess(
            {**env, "DATABASE_URL": f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{free_port()}/secrets"},
            tmp_path / "unreachable.log",
        ).start()
        processes = [healthy, rejected, unreachable]
        try:
            for process in processes:
                process.wait_until_serving()
            await asyncio.sleep(2)
            for process in processes:
                responses += exercise_api(process.url, token)

            cluster.stop()
            responses += exercise_api(healthy.url, token)
            await asyncio.sleep(2)
            cluster.start()
            await asyncio.sleep(1)
            responses += exercise_api(healthy.url, token)
        finally:
            for process in processes:
                process.stop()

    statuses = {response.status_code for response in responses}
    exposed = responses_text(responses)
    outputs = "\n".join(process.output() for process in processes)
    assert {201, 401, 422, 503} <= statuses
    assert 500 not in statuses
    assert "password authentication failed" in rejected.output()
    for secret in (password, wrong_password, token):
        assert secret not in exposed
        assert secret not in outputs
    assert json.loads(responses[-3].text)["database"] == "ok"
