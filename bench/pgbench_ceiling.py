"""The PostgreSQL ceiling for unbatched task lives: pgbench runs task_life.sql at 1, 8 and 32 clients.

Each task life is three transactions (insert pending, update to running, update to
completed), one row each, as a runner without batching would write them.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, asyncpg_dsn, benchmark_database, print_table, write_result  # noqa: E402

PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench")
TABLE_DDL = """
CREATE TABLE task_lives (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX task_lives_pending_idx ON task_lives (id) WHERE status = 'pending';
"""


def find_pgbench() -> str:
    for candidate in PGBENCH_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found: install postgresql-client-15 or set PATH")
    return found


def run_pgbench(pgbench: str, dsn: str, clients: int, seconds: int) -> float:
    command = [pgbench, "-n", "-f", str(BENCH_DIR / "task_life.sql"), "-c", str(clients),
               "-j", str(min(clients, 2)), "-T", str(seconds), dsn]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise RuntimeError(f"no tps line in the pgbench output:\n{result.stdout}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each pgbench run")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    pgbench = find_pgbench()
    lives: dict[str, Any] = {}
    with benchmark_database("benchpg", migrated=False) as url:
        dsn = asyncpg_dsn(url)
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", TABLE_DDL], check=True,
                       capture_output=True, timeout=60)
        for clients in args.clients:
            lives[str(clients)] = run_pgbench(pgbench, dsn, clients, args.seconds)

    print_table("pgbench: task lives per second (three transactions each)", ["clients", "lives/s"],
                [[int(clients), value] for clients, value in lives.items()])
    path = write_result("pgbench", {"system": "pgbench", "arguments": vars(args),
                                    "result": {"lives_per_second": lives, "seconds": args.seconds}}, args.output)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
