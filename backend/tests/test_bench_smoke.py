"""Smoke runs of the benchmark scripts in bench/: tiny sizes, no timing assertions.

They keep the scripts working as the product changes. Each run starts real processes and
writes its JSON, which is checked for sane fields only. The Procrastinate and arq anchors
need bench/.venv (`make bench-install`) and are skipped without it.
"""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_DIR / "bench"
BENCH_PYTHON = BENCH_DIR / ".venv" / "bin" / "python"
SCRIPT_TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.slow

requires_bench_venv = pytest.mark.skipif(
    not BENCH_PYTHON.exists(), reason="bench/.venv is missing; `make bench-install` creates it"
)


def run_script(python: Path | str, arguments: list[str], output: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [str(python), *arguments[:1], "--output", str(output), *arguments[1:]],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, f"{arguments} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    document = json.loads(output.read_text())
    assert document["machine"]["cpus"] >= 1
    return document["result"]


def is_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and value > 0


def test_drain_smoke(tmp_path: Path) -> None:
    result = run_script(sys.executable, ["bench/ours.py", "drain", "--tasks", "200"], tmp_path / "drain.json")

    assert result["completed"] == 200
    assert is_positive(result["tasks_per_second"])
    assert is_positive(result["peak_rss_mb"])


def test_concurrency_smoke(tmp_path: Path) -> None:
    result = run_script(
        sys.executable, ["bench/ours.py", "drain", "--tasks", "200", "--execution-time", "1"], tmp_path / "sleep.json"
    )

    assert result["completed"] == 200
    assert result["span_seconds"] >= 1.0


def test_pickup_smoke(tmp_path: Path) -> None:
    result = run_script(
        sys.executable, ["bench/ours.py", "pickup", "--count", "10", "--warmup", "2"], tmp_path / "pickup.json"
    )

    assert result["measured_from"] in ("commit", "insert")
    for mode in ("in_process", "separate"):
        assert result[mode]["count"] == 10
        assert result[mode]["p50_ms"] <= result[mode]["p99_ms"]


def test_api_load_smoke(tmp_path: Path) -> None:
    result = run_script(
        sys.executable, ["bench/ours.py", "api", "--rate", "20", "--duration", "1"], tmp_path / "api.json"
    )

    for route in ("post", "get"):
        assert result[route]["requests"] == 20
        assert result[route]["errors"] == 0
        assert is_positive(result[route]["p99_ms"])


def test_scale_smoke(tmp_path: Path) -> None:
    result = run_script(
        sys.executable,
        ["bench/ours.py", "scale", "--sizes", "500", "1000", "--repeats", "3", "--passes", "1", "--drain-tasks", "100"],
        tmp_path / "scale.json",
    )

    assert set(result["sizes"]) == {"500", "1000"}
    for entry in result["sizes"].values():
        assert set(entry["queries"]) == {"first_page", "status_filter", "name_search", "status_counts"}
        assert is_positive(entry["drain_tasks_per_second"])


def test_pgbench_smoke(tmp_path: Path) -> None:
    result = run_script(
        sys.executable, ["bench/pgbench_ceiling.py", "--seconds", "1", "--clients", "1"], tmp_path / "pgbench.json"
    )

    assert is_positive(result["lives_per_second"]["1"])


@requires_bench_venv
@pytest.mark.parametrize("system", ["procrastinate", "arq"])
def test_anchor_smoke(system: str, tmp_path: Path) -> None:
    drain = run_script(
        BENCH_PYTHON, ["bench/anchors.py", system, "drain", "--tasks", "100"], tmp_path / "drain.json"
    )
    pickup = run_script(
        BENCH_PYTHON, ["bench/anchors.py", system, "pickup", "--count", "5", "--warmup", "1"], tmp_path / "pickup.json"
    )

    assert drain["completed"] == 100
    assert is_positive(drain["tasks_per_second"])
    assert pickup["separate"]["count"] == 5
