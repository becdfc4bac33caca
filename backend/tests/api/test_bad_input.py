"""Invalid requests to the task API: each gets a 4xx that names the field and the rule, and writes nothing."""

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.schemas import NAME_MAX_LENGTH
from app.settings import Settings

JSON_HEADERS = {"Content-Type": "application/json"}
VALID_BODY: dict[str, Any] = {"name": "valid", "type": "notification", "execution_time": 1}


def raw_body(**fields: str) -> bytes:
    """Build a create body from JSON fragments, so that literals json.dumps cannot emit (NaN, huge ints) get through."""
    merged = {key: json.dumps(value) for key, value in VALID_BODY.items()}
    merged.update(fields)
    members = ", ".join(f'"{key}": {value}' for key, value in merged.items() if value is not None)
    return f"{{{members}}}".encode()


async def count_rows(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        tasks = (await conn.execute(text("SELECT count(*) FROM tasks"))).scalar_one()
        logs = (await conn.execute(text("SELECT count(*) FROM task_logs"))).scalar_one()
    return tasks, logs


def names_field(message: str, field: str) -> bool:
    """Tell whether message starts with field, alone or with an index such as "status.0"."""
    return any(message.startswith(f"{field}{separator}") for separator in (": ", " ", "."))


def messages(response: httpx.Response) -> list[str]:
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return [detail]
    return [str(error["msg"]) for error in detail]


# Each case: test id, JSON fragments replacing fields of VALID_BODY, the field, and texts that its
# message must contain. A fragment of None leaves the field out. "{max}" becomes MAX_EXECUTION_TIME.
INVALID_FIELDS: list[tuple[str, dict[str, str | None], str, list[str]]] = [
    ("name-empty", {"name": '""'}, "name", ["1 character"]),
    ("name-spaces", {"name": '"   "'}, "name", ["other than spaces"]),
    ("name-tab-newline", {"name": '"\\t\\n"'}, "name", ["name"]),
    ("name-over-max", {"name": json.dumps("a" * (NAME_MAX_LENGTH + 1))}, "name", [str(NAME_MAX_LENGTH)]),
    ("name-emoji-over-max", {"name": json.dumps("📦" * (NAME_MAX_LENGTH + 1))}, "name", [str(NAME_MAX_LENGTH)]),
    ("name-nul", {"name": '"a\\u0000b"'}, "name", ["control character", "U+0000"]),
    ("name-bell", {"name": '"ring\\u0007"'}, "name", ["control character", "U+0007"]),
    ("name-escape", {"name": '"\\u001b[31mred"'}, "name", ["control character", "U+001B"]),
    ("name-delete", {"name": '"del\\u007f"'}, "name", ["control character", "U+007F"]),
    ("name-c1-next-line", {"name": '"next\\u0085line"'}, "name", ["control character", "U+0085"]),
    ("name-inner-newline", {"name": '"two\\nlines"'}, "name", ["control character", "U+000A"]),
    ("name-lone-surrogate", {"name": '"\\ud800"'}, "name", ["unicode"]),
    ("name-number", {"name": "42"}, "name", ["string"]),
    ("name-null", {"name": "null"}, "name", ["string"]),
    ("name-missing", {"name": None}, "name", ["required"]),
    ("type-unknown", {"type": '"email"'}, "type", ["notification", "processing"]),
    ("type-uppercase", {"type": '"NOTIFICATION"'}, "type", ["notification", "processing"]),
    ("type-missing", {"type": None}, "type", ["required"]),
    ("execution-time-negative", {"execution_time": "-5"}, "execution_time", ["between 0 and {max}"]),
    ("execution-time-tiny-negative", {"execution_time": "-0.001"}, "execution_time", ["between 0 and {max}"]),
    ("execution-time-nan", {"execution_time": "NaN"}, "execution_time", ["finite", "0 to {max}"]),
    ("execution-time-infinity", {"execution_time": "Infinity"}, "execution_time", ["finite", "0 to {max}"]),
    ("execution-time-minus-infinity", {"execution_time": "-Infinity"}, "execution_time", ["finite", "0 to {max}"]),
    ("execution-time-overflowing-float", {"execution_time": "1e400"}, "execution_time", ["finite", "0 to {max}"]),
    ("execution-time-over-max", {"execution_time": "3601"}, "execution_time", ["between 0 and {max}"]),
    ("execution-time-int32-overflow", {"execution_time": "2147483648"}, "execution_time", ["between 0 and {max}"]),
    (
        "execution-time-int64-overflow",
        {"execution_time": "9223372036854775808"},
        "execution_time",
        ["between 0 and {max}"],
    ),
    ("execution-time-1e20-integer", {"execution_time": "100000000000000000000"}, "execution_time", ["{max}"]),
    ("execution-time-1e20-float", {"execution_time": "1e20"}, "execution_time", ["between 0 and {max}"]),
    ("execution-time-numeric-string", {"execution_time": '"5"'}, "execution_time", ["number"]),
    ("execution-time-text", {"execution_time": '"abc"'}, "execution_time", ["number"]),
    ("execution-time-true", {"execution_time": "true"}, "execution_time", ["number"]),
    ("execution-time-false", {"execution_time": "false"}, "execution_time", ["number"]),
    ("execution-time-null", {"execution_time": "null"}, "execution_time", ["number"]),
    ("execution-time-list", {"execution_time": "[]"}, "execution_time", ["number"]),
    ("execution-time-object", {"execution_time": "{}"}, "execution_time", ["number"]),
    ("execution-time-missing", {"execution_time": None}, "execution_time", ["required"]),
    ("failure-rate-negative", {"failure_rate": "-0.1"}, "failure_rate", ["between 0 and 1"]),
    ("failure-rate-over-one", {"failure_rate": "1.01"}, "failure_rate", ["between 0 and 1"]),
    ("failure-rate-percent", {"failure_rate": "50"}, "failure_rate", ["between 0 and 1"]),
    ("failure-rate-nan", {"failure_rate": "NaN"}, "failure_rate", ["between 0 and 1"]),
    ("failure-rate-infinity", {"failure_rate": "Infinity"}, "failure_rate", ["between 0 and 1"]),
    ("failure-rate-string", {"failure_rate": '"0.5"'}, "failure_rate", ["number"]),
    ("failure-rate-true", {"failure_rate": "true"}, "failure_rate", ["number"]),
    ("failure-rate-null", {"failure_rate": "null"}, "failure_rate", ["number"]),
    ("unknown-field", {"priority": "5"}, "priority", ["not permitted"]),
    ("unknown-field-id", {"id": "7"}, "id", ["not permitted"]),
    ("unknown-field-status", {"status": '"completed"'}, "status", ["not permitted"]),
]


@pytest.mark.parametrize(
    ("fields", "field", "fragments"),
    [case[1:] for case in INVALID_FIELDS],
    ids=[case[0] for case in INVALID_FIELDS],
)
async def test_create_rejects_invalid_field(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    fields: dict[str, str | None],
    field: str,
    fragments: list[str],
) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", content=raw_body(**fields), headers=JSON_HEADERS)

    assert response.status_code == 422, response.text
    about_field = [message for message in messages(response) if names_field(message, field)]
    assert about_field, f"no message starts with {field!r}: {messages(response)}"
    for fragment in fragments:
        expected = fragment.replace("{max}", str(settings.max_execution_time))
        found = any(expected.lower() in message.lower() for message in about_field)
        assert found, f"{expected!r} missing in {about_field}"
    assert await count_rows(engine) == before


async def test_create_rejects_several_fields_at_once(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    before = await count_rows(engine)

    response = await client.post(
        "/tasks/", content=raw_body(name='""', type='"email"', execution_time="-1"), headers=JSON_HEADERS
    )

    assert response.status_code == 422
    for field in ("name", "type", "execution_time"):
        assert any(names_field(message, field) for message in messages(response)), messages(response)
    assert await count_rows(engine) == before


# Bodies that are not a JSON object of fields at all.
MALFORMED_BODIES: list[tuple[str, bytes, str]] = [
    ("truncated-json", b'{"name": "x", "type": ', "JSON"),
    ("unquoted-keys", b"{name: 'x'}", "JSON"),
    ("trailing-comma", b'{"name": "x", "type": "notification", "execution_time": 1,}', "JSON"),
    ("empty-body", b"", "required"),
    ("json-array", b'[{"name": "x", "type": "notification", "execution_time": 1}]', "object"),
    ("json-string", b'"name"', "object"),
    ("json-null", b"null", "object"),
    ("invalid-utf8", b'{"name": "\xff\xfe", "type": "notification", "execution_time": 1}', "JSON"),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [case[1:] for case in MALFORMED_BODIES], ids=[case[0] for case in MALFORMED_BODIES]
)
async def test_create_rejects_malformed_body(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes, fragment: str
) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", content=body, headers=JSON_HEADERS)

    assert response.status_code == 422, response.text
    assert any(fragment in message for message in messages(response)), messages(response)
    assert await count_rows(engine) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
async def test_create_rejects_wrong_content_type(
    client: httpx.AsyncClient, engine: AsyncEngine, content_type: str
) -> None:
    before = await count_rows(engine)
    body = json.dumps(VALID_BODY).encode()

    response = await client.post("/tasks/", content=body, headers={"Content-Type": content_type})

    assert response.status_code in (415, 422), response.text
    assert await count_rows(engine) == before


async def test_create_rejects_form_fields(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", data={"name": "form", "type": "notification", "execution_time": "1"})

    assert response.status_code in (415, 422), response.text
    assert await count_rows(engine) == before


async def test_create_rejects_body_over_size_limit(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", content=raw_body(name=json.dumps("a" * 100_000)), headers=JSON_HEADERS)

    assert response.status_code in (413, 422), response.text
    assert "limit" in response.text or "200" in response.text
    assert await count_rows(engine) == before


@pytest.mark.parametrize(
    "name",
    [
        "📦 Отчёт №1 — 数据处理 ✅ مرحبا",
        "e\u0301",
        "\u00e9",
        "zero\u200bwidth",
        "👩‍👩‍👧‍👦 family",
        "🇺🇦🇯🇵",
        "שלום עולם",
        "<img src=x onerror=alert(1)>",
        "'; DROP TABLE tasks; --",
        "  padded  ",
        "%_\\",
    ],
    ids=[
        "multilingual",
        "combining-accent",
        "precomposed-accent",
        "zero-width-space",
        "emoji-zwj-sequence",
        "flag-emoji",
        "hebrew",
        "html",
        "sql",
        "padded",
        "like-wildcards",
    ],
)
async def test_create_round_trips_unicode_name(client: httpx.AsyncClient, name: str) -> None:
    created = await client.post("/tasks/", json={**VALID_BODY, "name": name})

    assert created.status_code == 201, created.text
    assert created.json()["name"] == name
    task_id = created.json()["id"]
    fetched = await client.get(f"/tasks/{task_id}")
    assert fetched.json()["name"] == name
    listed = await client.get("/tasks/")
    assert [item["name"] for item in listed.json()["items"]] == [name]
    searched = await client.get("/tasks/", params={"q": name})
    assert [item["id"] for item in searched.json()["items"]] == [task_id]
    logs = await client.get(f"/tasks/{task_id}/logs")
    assert logs.status_code == 200


@pytest.mark.parametrize(
    "name",
    ["a" * NAME_MAX_LENGTH, "📦" * NAME_MAX_LENGTH, "é" * NAME_MAX_LENGTH, "e\u0301" * (NAME_MAX_LENGTH // 2)],
    ids=["ascii", "emoji", "two-byte", "combining"],
)
async def test_create_accepts_name_of_max_length(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/tasks/", json={**VALID_BODY, "name": name})

    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


@pytest.mark.parametrize(
    ("execution_time", "failure_rate"),
    [(0, 0), (0.0, 1), (1e-6, 0.5), (3600, 0.0), (3600.0, 1.0)],
    ids=["zero", "zero-float", "tiny", "max-integer", "max-float"],
)
async def test_create_accepts_bounds(
    client: httpx.AsyncClient, execution_time: float, failure_rate: float
) -> None:
    response = await client.post(
        "/tasks/", json={**VALID_BODY, "execution_time": execution_time, "failure_rate": failure_rate}
    )

    assert response.status_code == 201, response.text
    assert response.json()["execution_time"] == execution_time
    assert response.json()["failure_rate"] == failure_rate


TASK_ROUTES = [
    ("GET", "/tasks/{id}"),
    ("GET", "/tasks/{id}/logs"),
    ("POST", "/tasks/{id}/cancel"),
    ("DELETE", "/tasks/{id}"),
]


@pytest.mark.parametrize(("method", "route"), TASK_ROUTES, ids=[f"{m} {r}" for m, r in TASK_ROUTES])
async def test_unknown_id_returns_not_found(client: httpx.AsyncClient, method: str, route: str) -> None:
    response = await client.request(method, route.format(id=987654321))

    assert response.status_code == 404
    assert "987654321" in response.json()["detail"]
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(("method", "route"), TASK_ROUTES, ids=[f"{m} {r}" for m, r in TASK_ROUTES])
@pytest.mark.parametrize(
    "task_id",
    ["abc", "1.5", "1e20", "0x10", "9223372036854775808", "100000000000000000000", "0", "-1"],
)
async def test_invalid_id_is_rejected(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, route: str, task_id: str
) -> None:
    before = await count_rows(engine)

    response = await client.request(method, route.format(id=task_id))

    assert response.status_code == 422, response.text
    assert all(names_field(message, "task_id") for message in messages(response)), messages(response)
    assert await count_rows(engine) == before


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "201"},
        {"limit": "abc"},
        {"offset": "-1"},
        {"offset": "2147483648"},
        {"offset": "9223372036854775808"},
        {"status": "done"},
        {"type": "email"},
        {"q": "x" * 201},
    ],
    ids=lambda params: "-".join(f"{key}={value[:12]}" for key, value in params.items()),
)
async def test_list_rejects_invalid_query(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/tasks/", params=params)

    assert response.status_code == 422, response.text
    field = next(iter(params))
    assert any(names_field(message, field) for message in messages(response)), messages(response)


@pytest.mark.parametrize(
    "key", ["", "k" * 201], ids=["empty", "over-max-length"]
)
async def test_create_rejects_invalid_idempotency_key(
    client: httpx.AsyncClient, engine: AsyncEngine, key: str
) -> None:
    before = await count_rows(engine)

    response = await client.post("/tasks/", json=VALID_BODY, headers={"Idempotency-Key": key})

    assert response.status_code == 422, response.text
    assert any("idempotency" in message.lower() for message in messages(response)), messages(response)
    assert await count_rows(engine) == before
