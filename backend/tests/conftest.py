"""Test set-up: one fresh PostgreSQL database per session, migrated once, emptied before each test.

The server is TEST_DATABASE_URL's when set, else the embedded PostgreSQL of
scripts/database.py. The database is dropped at the end of the session.
"""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

BACKEND_DIR = Path(__file__).resolve().parents[1]


def create_test_database() -> str:
    result = subprocess.run(
        [sys.executable, "scripts/database.py", "create", "--prefix", "pytest"],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not create the test database:\n{result.stderr}")
    return result.stdout.strip()


def migrate(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=BACKEND_DIR,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{result.stderr}")


# Settings are read when app modules are imported, so the environment is set first.
TEST_DATABASE_URL = create_test_database()
os.environ["DATABASE_URL"] = TEST_DATABASE_URL
os.environ["RETRY_BACKOFF_BASE_SECONDS"] = "0.1"
os.environ["RETRY_BACKOFF_MAX_SECONDS"] = "0.3"
os.environ["WORKER_POLL_INTERVAL_SECONDS"] = "0.2"
os.environ.pop("API_TOKEN", None)
migrate(TEST_DATABASE_URL)

from app.db import create_engine  # noqa: E402
from app.main import app  # noqa: E402
from app.settings import Settings, get_settings  # noqa: E402
from app.worker import Worker  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    subprocess.run(
        [sys.executable, "scripts/database.py", "drop", TEST_DATABASE_URL],
        cwd=BACKEND_DIR,
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="session")
def database_url() -> str:
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def empty_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("TRUNCATE tasks, task_logs, task_status_counts, workers RESTART IDENTITY CASCADE")
        )


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app in this process, without a worker unless the `worker` fixture runs."""
    app.state.engine = engine
    if not hasattr(app.state, "worker"):
        app.state.worker = None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def worker(engine: AsyncEngine, settings: Settings) -> AsyncIterator[Worker]:
    """A worker running in the test's event loop, woken by creates through `client`."""
    worker = Worker(engine, settings)
    app.state.worker = worker
    run = asyncio.create_task(worker.run())
    yield worker
    await worker.stop()
    await run
    app.state.worker = None


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll condition until it is true; fail the test after timeout seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
