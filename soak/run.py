"""Soak runs: the fault and load scenarios of backend/tests at full size, too long for `make test`.

    backend/.venv/bin/python soak/run.py                 all three runs, about 4 minutes
    backend/.venv/bin/python soak/run.py --only kill     one of: kill, load, fuzz

kill: 1,000 tasks of 0.2-2 s on 2 worker processes, one SIGKILLed 3 times and restarted.
load: 5,000 tasks created through the API faster than the worker drains them, then
      2,000 timed reads each of GET /health and GET /tasks/ against the full queue.
fuzz: tests/test_fuzz.py with FUZZ_EXAMPLES=500.

Each run gets a fresh database on the test server (TEST_DATABASE_URL, else the embedded
PostgreSQL of backend/scripts/database.py). Results go to stdout and to
.data/soak/results.json. The exit status is 1 when a run lost, stuck or repeated a task,
or when the fuzzing found a failure.
"""

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKEND_DIR = REPO_ROOT / "backend"
RESULTS_PATH = REPO_ROOT / ".data" / "soak" / "results.json"
sys.path.insert(0, str(BACKEND_DIR))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from tests.test_reliability import run_kill_scenario, run_queue_scenario  # noqa: E402

KILL_TASKS = 1000
KILL_COUNT = 3
KILL_CONCURRENCY = 25
LOAD_API_TASKS = 5000
LOAD_SAMPLES = 2000
FUZZ_EXAMPLES = 500
# Upper bound of one run, in seconds.
RUN_TIMEOUT_SECONDS = 900


def run_script(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "scripts/database.py", *args], cwd=BACKEND_DIR, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/database.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip()


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=BACKEND_DIR,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        check=True,
    )


async def with_database(scenario: str) -> dict:
    database_url = run_script("create", "--prefix", f"soak_{scenario}")
    engine = create_async_engine(database_url)
    log_dir = Path(tempfile.mkdtemp(prefix=f"soak-{scenario}-"))
    try:
        migrate(database_url)
        if scenario == "kill":
            report = await run_kill_scenario(
                engine,
                database_url,
                log_dir,
                tasks=KILL_TASKS,
                kills=KILL_COUNT,
                concurrency=KILL_CONCURRENCY,
                timeout=RUN_TIMEOUT_SECONDS,
            )
            result = report.as_dict()
            result["ok"] = (
                report.lost == report.stuck == report.run_twice == report.runs_without_outcome == 0
                and report.failed_with_runs_left == 0
            )
        else:
            report = await run_queue_scenario(
                engine, database_url, log_dir, api_tasks=LOAD_API_TASKS, sql_tasks=0, samples=LOAD_SAMPLES
            )
            result = asdict(report)
            result["ok"] = report.running_max <= report.concurrency
    finally:
        await engine.dispose()
        run_script("drop", database_url)
    result["logs"] = str(log_dir)
    return result


def run_fuzz() -> dict:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-s", "-p", "no:cacheprovider"],
        cwd=BACKEND_DIR,
        env={**os.environ, "FUZZ_EXAMPLES": str(FUZZ_EXAMPLES)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    summary = [line for line in completed.stdout.splitlines() if line.startswith("fuzzing:")]
    tail = completed.stdout.strip().splitlines()[-1:] if completed.stdout.strip() else []
    return {
        "examples": FUZZ_EXAMPLES,
        "summary": summary[-1] if summary else "no summary line",
        "pytest": tail[0] if tail else completed.stderr[-500:],
        "seconds": round(time.monotonic() - started, 1),
        "ok": completed.returncode == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["kill", "load", "fuzz"], help="run one scenario instead of all")
    args = parser.parse_args()
    scenarios = [args.only] if args.only else ["kill", "load", "fuzz"]

    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    for scenario in scenarios:
        print(f"soak: running {scenario}", flush=True)
        results[scenario] = run_fuzz() if scenario == "fuzz" else asyncio.run(with_database(scenario))
        print(json.dumps({scenario: results[scenario]}, default=str, indent=2), flush=True)

    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, default=str, indent=2))
    failed = [scenario for scenario in scenarios if not results[scenario]["ok"]]
    print(f"soak: {len(scenarios) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
