"""Start the whole stack for `make run` (or `make dev` with --dev) and stop it on Ctrl-C.

Steps: load .env, find PostgreSQL (DATABASE_URL, else the embedded server under
.data/postgres), run the migrations, start the API with its worker on API_PORT (8000) and
the Nuxt server on UI_PORT (3000). When one process exits, or on Ctrl-C or SIGTERM, every
process started here is stopped by its pid, the embedded PostgreSQL included.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKEND_DIR = REPO_ROOT / "backend"
FRONTEND_DIR = REPO_ROOT / "frontend"
sys.path.insert(0, str(BACKEND_DIR / "scripts"))

import database  # noqa: E402

STOP_TIMEOUT_SECONDS = 20


def require_free_port(port: int, variable: str) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(
                f"port {port} is already in use. Stop the program that holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with {variable}=..."
            )


def load_dotenv_file() -> None:
    from dotenv import dotenv_values

    # Variables already in the environment win over .env. The API address and the allowed
    # origins follow API_PORT and UI_PORT (see local_addresses), so .env does not set them:
    # its values there are the ones Docker Compose needs.
    for name, value in dotenv_values(REPO_ROOT / ".env").items():
        if name not in os.environ and name not in ("NUXT_PUBLIC_API_BASE", "CORS_ORIGINS") and value is not None:
            os.environ[name] = value
    for name in ("DATABASE_URL", "API_TOKEN", "NUXT_API_BASE_SERVER", "NUXT_API_TOKEN"):
        if os.environ.get(name) == "":
            del os.environ[name]


def local_addresses(api_port: int, ui_port: int) -> dict[str, str]:
    """Point the dashboard at this API and let this dashboard's origins call it.

    NUXT_PUBLIC_API_BASE and CORS_ORIGINS set in the shell environment are kept as given.
    """
    origins = [f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}"]
    return {
        "NUXT_PUBLIC_API_BASE": os.environ.get("NUXT_PUBLIC_API_BASE", f"http://localhost:{api_port}"),
        "CORS_ORIGINS": os.environ.get("CORS_ORIGINS", json.dumps(origins)),
    }


def migrate(env: dict[str, str]) -> None:
    print("Running database migrations (alembic upgrade head)", flush=True)
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=BACKEND_DIR, env=env, check=True)


def start_api(env: dict[str, str], port: int, dev: bool) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    if dev:
        command.append("--reload")
    return subprocess.Popen(command, cwd=BACKEND_DIR, env=env)


def start_frontend(env: dict[str, str], port: int, dev: bool) -> subprocess.Popen[bytes]:
    frontend_env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    if dev:
        return subprocess.Popen(["npm", "run", "dev", "--", "--port", str(port)], cwd=FRONTEND_DIR, env=frontend_env)
    server = FRONTEND_DIR / ".output" / "server" / "index.mjs"
    if not server.exists():
        sys.exit("frontend/.output is missing: run `make run`, which builds the frontend first")
    # The node package in devDependencies is Node 22; the machine's node may be older.
    node = FRONTEND_DIR / "node_modules" / ".bin" / "node"
    return subprocess.Popen([str(node if node.exists() else "node"), str(server)], cwd=FRONTEND_DIR, env=frontend_env)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", action="store_true", help="reload the API and the frontend when files change")
    parser.add_argument("--no-frontend", action="store_true", help="start only the database and the API")
    args = parser.parse_args()

    load_dotenv_file()
    api_port = int(os.environ.get("API_PORT", "8000"))
    ui_port = int(os.environ.get("UI_PORT", "3000"))
    require_free_port(api_port, "API_PORT")
    if not args.no_frontend:
        require_free_port(ui_port, "UI_PORT")

    embedded = None
    if os.environ.get("DATABASE_URL"):
        database_url = os.environ["DATABASE_URL"]
        print("Using the PostgreSQL server of DATABASE_URL", flush=True)
    else:
        print(f"Starting the embedded PostgreSQL in {database.RUN_DATA_DIR}", flush=True)
        embedded = database.start_embedded_server(database.RUN_DATA_DIR, keep_running=False)
        database_url = database.prepare_run_database(embedded.admin_url)
    env = {**os.environ, **local_addresses(api_port, ui_port), "DATABASE_URL": database_url}
    migrate(env)

    processes = [start_api(env, api_port, args.dev)]
    if not args.no_frontend:
        processes.append(start_frontend(env, ui_port, args.dev))
    print(
        f"\nAPI:        http://localhost:{api_port}/tasks/  (Swagger UI at /docs)\n"
        + ("" if args.no_frontend else f"Dashboard:  http://localhost:{ui_port}/\n")
        + "Press Ctrl-C to stop.\n",
        flush=True,
    )

    stopping = False

    def request_stop(_signal: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    try:
        while not stopping:
            exited = [process for process in processes if process.poll() is not None]
            if exited:
                exit_code = exited[0].returncode or 1
                print(f"process {exited[0].args[0]} exited with {exited[0].returncode}; stopping the rest", flush=True)
                break
            time.sleep(0.5)
    finally:
        print("Stopping...", flush=True)
        stop_all(processes)
        if embedded is not None:
            embedded.stop()
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
