"""Start the API and workers as real processes on free loopback ports, and stop them by pid."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BACKEND_DIR = Path(__file__).resolve().parents[1]
# The same commands the backend image runs (see backend/Dockerfile).
MIGRATE_COMMAND = [sys.executable, "-m", "alembic", "upgrade", "head"]
API_COMMAND = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
WORKER_COMMAND = [sys.executable, "-m", "app.worker"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A child process whose output goes to a log file, stopped by its own pid."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Process":
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.command, cwd=BACKEND_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError("process not started")
        return self.popen.pid

    def signal(self, number: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, number)

    def wait(self, timeout: float) -> int:
        if self.popen is None:
            raise RuntimeError("process not started")
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after timeout seconds."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ApiProcess(Process):
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__([*API_COMMAND, "--port", str(self.port)], env, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until_serving(self, timeout: float = 20.0) -> None:
        """Wait until the port serves HTTP (any status), or fail with the process output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"API exited with {self.popen.returncode}:\n{self.output()}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"API did not answer within {timeout} s:\n{self.output()}")


class WorkerProcess(Process):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(WORKER_COMMAND, env, log_path)
