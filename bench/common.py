"""Helpers shared by the benchmark scripts: databases, child processes, statistics, results.

The scripts run with the backend's virtualenv or with bench/.venv: they need only the
standard library, asyncpg and httpx, which both provide. Every server they start listens
on 127.0.0.1 on a port chosen at run time, and every database they create they drop.
"""

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_DIR / "bench"
BACKEND_DIR = REPO_DIR / "backend"
RESULTS_DIR = BENCH_DIR / "results"
LOG_DIR = RESULTS_DIR / "logs"
BACKEND_PYTHON = BACKEND_DIR / ".venv" / "bin" / "python"
BENCH_PYTHON = BENCH_DIR / ".venv" / "bin" / "python"

POSTGRES_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


def backend_python() -> str:
    """Return the backend's interpreter, or this one when the backend has no virtualenv."""
    return str(BACKEND_PYTHON) if BACKEND_PYTHON.exists() else sys.executable


def asyncpg_dsn(url: str) -> str:
    """Turn a SQLAlchemy URL into the libpq form that asyncpg, psycopg and pgbench accept."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def create_database(prefix: str) -> str:
    """Create an empty database on the test server and return its SQLAlchemy URL.

    The test server is TEST_DATABASE_URL's, else the embedded one of backend/scripts/database.py,
    as for the tests, so the data of `make run` is never touched.
    """
    result = subprocess.run(
        [backend_python(), "scripts/database.py", "create", "--prefix", prefix],
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not create a benchmark database:\n{result.stderr}")
    return result.stdout.strip()


def drop_database(url: str) -> None:
    subprocess.run(
        [backend_python(), "scripts/database.py", "drop", url],
        cwd=BACKEND_DIR,
        capture_output=True,
        timeout=60,
        check=False,
    )


def migrate(url: str) -> None:
    result = subprocess.run(
        [backend_python(), "-m", "alembic", "upgrade", "head"],
        cwd=BACKEND_DIR,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{result.stderr}")


@contextlib.contextmanager
def benchmark_database(prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """Create a fresh database for one benchmark and drop it on exit, even after a failure."""
    url = create_database(prefix)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        drop_database(url)


def can_start_private_server() -> bool:
    """Return whether this machine can run a PostgreSQL cluster of the benchmark's own."""
    initdb = POSTGRES_BIN_DIR / "initdb"
    if not initdb.exists():
        return False
    if os.geteuid() != 0:
        return True
    return shutil.which("runuser") is not None and subprocess.run(
        ["id", "postgres"], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def private_server(**settings: str) -> Iterator[str]:
    """Run a PostgreSQL 15 cluster of our own on a free loopback port; yield its admin URL.

    The pickup benchmark needs track_commit_timestamp, which only a server restart turns
    on, so it cannot borrow the shared server. PostgreSQL refuses to run as root, so as
    root the cluster runs as the postgres user. It is stopped and deleted on exit.
    """
    base_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    data_dir = base_dir / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(base_dir, "postgres")
    port = free_port()
    options = " ".join(
        [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={base_dir}",
         *(f"-c {name}={value}" for name, value in settings.items())]
    )
    pg_ctl = [*as_postgres, str(POSTGRES_BIN_DIR / "pg_ctl"), "-D", str(data_dir)]
    try:
        subprocess.run([*as_postgres, str(POSTGRES_BIN_DIR / "initdb"), "-D", str(data_dir), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-o", options, "-l", str(base_dir / "server.log"), "-w", "start"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data_dir / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(base_dir, ignore_errors=True)


@contextlib.contextmanager
def server_for_commit_times() -> Iterator[bool]:
    """Point the benchmark at a private server with commit timestamps when one can start.

    Yield whether commit timestamps are available; without them, latencies start at the
    creating statement instead of its commit.
    """
    if not can_start_private_server():
        yield False
        return
    previous = os.environ.get("TEST_DATABASE_URL")
    with private_server(track_commit_timestamp="on") as admin_url:
        os.environ["TEST_DATABASE_URL"] = admin_url
        try:
            yield True
        finally:
            if previous is None:
                os.environ.pop("TEST_DATABASE_URL", None)
            else:
                os.environ["TEST_DATABASE_URL"] = previous


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Child:
    """A child process with its output in a log file, stopped by its own pid."""

    def __init__(self, name: str, command: Sequence[str], *, env: dict[str, str], cwd: Path) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(command), cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory so far (VmHWM), in MiB; None once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after timeout seconds."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def check_alive(self) -> None:
        if not self.is_running():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")


def backend_env(database_url: str, **settings: object) -> dict[str, str]:
    """Environment for an API or worker process of ours; settings are upper-cased env names."""
    env = {
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "API_TOKEN": "",
        "MAX_PENDING_TASKS": "10000000",
    }
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


def start_worker(database_url: str, name: str = "worker", **settings: object) -> Child:
    return Child(name, [backend_python(), "-m", "app.worker"], env=backend_env(database_url, **settings), cwd=BACKEND_DIR)


def start_api(database_url: str, port: int, name: str = "api", **settings: object) -> Child:
    command = [backend_python(), "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--no-access-log", "--log-level", "warning"]
    return Child(name, command, env=backend_env(database_url, **settings), cwd=BACKEND_DIR)


def wait_for_http(child: Child, url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not respond at {url} within {timeout} s:\n{child.output()[-3000:]}")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0..1) of values; NaN for an empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize_ms(values_seconds: Sequence[float]) -> dict[str, float]:
    values = [value * 1000 for value in values_seconds]
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.50), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "max_ms": round(max(values), 3) if values else float("nan"),
    }


def median(values: Sequence[float]) -> float:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else float("nan")


def machine_description() -> dict[str, Any]:
    memory_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "database_server": os.environ.get("TEST_DATABASE_URL", "embedded (backend/scripts/database.py)"),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_result(name: str, data: dict[str, Any], output: Path | None = None) -> Path:
    """Write one benchmark's result as JSON; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = output or RESULTS_DIR / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {"benchmark": name, "machine": machine_description(), **data}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows as a plain-text table under a title."""
    cells = [[format_cell(value) for value in row] for row in rows]
    widths = [max(len(column), *(len(row[i]) for row in cells)) if cells else len(column) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    print("  ".join("-" * width for width in widths))
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)))
    sys.stdout.flush()


def format_cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)
