"""Run every benchmark in interleaved rounds, print one summary table and write one JSON file.

Each round runs ours, Procrastinate and arq one after the other for drain, pickup and
concurrency, then pgbench and the API load. The scale benchmark runs once at the end, with
its own passes. The summary quotes the median over the rounds and each of our figures as a
ratio to the anchors of the same run. The anchors need bench/.venv (`make bench-install`);
without it they are left out, and the summary prints the reason.

  bench/.venv/bin/python bench/run_all.py            the full run (about 25 minutes)
  backend/.venv/bin/python bench/run_all.py --smoke  tiny sizes, to check the scripts work
"""

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, BENCH_PYTHON, RESULTS_DIR, median, print_table, write_result  # noqa: E402

FULL = {
    "drain": ["--tasks", "10000"],
    "concurrency": ["--tasks", "10000", "--execution-time", "1"],
    "procrastinate_drain": ["--tasks", "10000", "--concurrency", "10"],
    "procrastinate_concurrency": ["--tasks", "10000", "--execution-time", "1", "--concurrency", "10000"],
    "arq_drain": ["--tasks", "10000", "--concurrency", "100"],
    "arq_concurrency": ["--tasks", "10000", "--execution-time", "1", "--concurrency", "10000"],
    "pickup": ["--count", "200"],
    "api": ["--rate", "200", "--duration", "30"],
    "pgbench": ["--seconds", "10"],
    "scale": [],
}
SMOKE = {
    "drain": ["--tasks", "200"],
    "concurrency": ["--tasks", "200", "--execution-time", "1"],
    "procrastinate_drain": ["--tasks", "200", "--concurrency", "10"],
    "procrastinate_concurrency": ["--tasks", "200", "--execution-time", "1", "--concurrency", "200"],
    "arq_drain": ["--tasks", "200", "--concurrency", "100"],
    "arq_concurrency": ["--tasks", "200", "--execution-time", "1", "--concurrency", "200"],
    "pickup": ["--count", "10", "--warmup", "2"],
    "api": ["--rate", "50", "--duration", "2"],
    "pgbench": ["--seconds", "1", "--clients", "1", "2"],
    "scale": ["--sizes", "1000", "2000", "--repeats", "5", "--passes", "1", "--drain-tasks", "200"],
}


class Runner:
    def __init__(self, run_dir: Path, anchors: bool) -> None:
        self.run_dir = run_dir
        self.anchors = anchors
        self.count = 0

    def run(self, label: str, python: str, script: str, arguments: list[str], timeout: float) -> dict[str, Any]:
        """Run one benchmark script; return the "result" of its JSON file."""
        self.count += 1
        output = self.run_dir / f"{self.count:03d}-{label}.json"
        command = [python, str(BENCH_DIR / script), "--output", str(output), *arguments]
        print(f"\n== {label}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        completed = subprocess.run(command, timeout=timeout, check=False, capture_output=True, text=True)
        print(completed.stdout.rstrip(), flush=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{label} failed with exit code {completed.returncode}:\n{completed.stderr[-4000:]}")
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
        return json.loads(output.read_text())["result"]


def run_round(runner: Runner, sizes: dict[str, list[str]], skip_api: bool) -> dict[str, Any]:
    ours = sys.executable
    anchor = str(BENCH_PYTHON)
    result: dict[str, Any] = {}

    result["ours_drain"] = runner.run("ours-drain", ours, "ours.py", ["drain", *sizes["drain"]], 600)
    if runner.anchors:
        result["procrastinate_drain"] = runner.run(
            "procrastinate-drain", anchor, "anchors.py", ["procrastinate", "drain", *sizes["procrastinate_drain"]], 600)
        result["arq_drain"] = runner.run("arq-drain", anchor, "anchors.py", ["arq", "drain", *sizes["arq_drain"]], 600)

    result["ours_pickup"] = runner.run("ours-pickup", ours, "ours.py", ["pickup", *sizes["pickup"]], 600)
    if runner.anchors:
        result["procrastinate_pickup"] = runner.run(
            "procrastinate-pickup", anchor, "anchors.py", ["procrastinate", "pickup", *sizes["pickup"]], 600)
        result["arq_pickup"] = runner.run("arq-pickup", anchor, "anchors.py", ["arq", "pickup", *sizes["pickup"]], 600)

    result["ours_concurrency"] = runner.run("ours-concurrency", ours, "ours.py", ["drain", *sizes["concurrency"]], 600)
    if runner.anchors:
        result["procrastinate_concurrency"] = runner.run(
            "procrastinate-concurrency", anchor, "anchors.py",
            ["procrastinate", "drain", *sizes["procrastinate_concurrency"]], 900)
        result["arq_concurrency"] = runner.run(
            "arq-concurrency", anchor, "anchors.py", ["arq", "drain", *sizes["arq_concurrency"]], 600)

    result["pgbench"] = runner.run("pgbench", ours, "pgbench_ceiling.py", sizes["pgbench"], 600)
    if not skip_api:
        result["ours_api"] = runner.run("ours-api", ours, "ours.py", ["api", *sizes["api"]], 600)
    return result


def pick(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for one in rounds:
        value: Any = one
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(float(value))
    return median(values)


def ratio(numerator: float, denominator: float) -> float:
    if numerator != numerator or denominator != denominator or not denominator:
        return float("nan")
    return round(numerator / denominator, 2)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of every figure, and our figures as ratios to the anchors'."""
    m: dict[str, float] = {
        "ours_drain_tasks_per_second": pick(rounds, "ours_drain", "tasks_per_second"),
        "procrastinate_drain_jobs_per_second": pick(rounds, "procrastinate_drain", "tasks_per_second"),
        "arq_drain_jobs_per_second": pick(rounds, "arq_drain", "tasks_per_second"),
        "ours_concurrency_span_seconds": pick(rounds, "ours_concurrency", "span_seconds"),
        "ours_concurrency_peak_rss_mb": pick(rounds, "ours_concurrency", "peak_rss_mb"),
        "procrastinate_concurrency_span_seconds": pick(rounds, "procrastinate_concurrency", "span_seconds"),
        "procrastinate_concurrency_peak_rss_mb": pick(rounds, "procrastinate_concurrency", "peak_rss_mb"),
        "arq_concurrency_span_seconds": pick(rounds, "arq_concurrency", "span_seconds"),
        "arq_concurrency_peak_rss_mb": pick(rounds, "arq_concurrency", "peak_rss_mb"),
        "api_post_p50_ms": pick(rounds, "ours_api", "post", "p50_ms"),
        "api_post_p99_ms": pick(rounds, "ours_api", "post", "p99_ms"),
        "api_post_errors": pick(rounds, "ours_api", "post", "errors"),
        "api_get_p50_ms": pick(rounds, "ours_api", "get", "p50_ms"),
        "api_get_p99_ms": pick(rounds, "ours_api", "get", "p99_ms"),
        "api_get_errors": pick(rounds, "ours_api", "get", "errors"),
    }
    for system, key in (("ours", "in_process"), ("ours", "separate"), ("procrastinate", "separate"),
                        ("arq", "separate")):
        for quantile in ("p50_ms", "p95_ms", "p99_ms"):
            prefix = f"{system}_pickup_{key}" if system == "ours" else f"{system}_pickup"
            m[f"{prefix}_{quantile}"] = pick(rounds, f"{system}_pickup", key, quantile)
    pgbench_clients = rounds[0].get("pgbench", {}).get("lives_per_second", {}) if rounds else {}
    for clients in pgbench_clients:
        m[f"pgbench_lives_per_second_{clients}_clients"] = pick(rounds, "pgbench", "lives_per_second", clients)

    ratios = {
        "drain_vs_procrastinate": ratio(m["ours_drain_tasks_per_second"], m["procrastinate_drain_jobs_per_second"]),
        "drain_vs_arq": ratio(m["ours_drain_tasks_per_second"], m["arq_drain_jobs_per_second"]),
        "pickup_p50_in_process_vs_procrastinate": ratio(m["ours_pickup_in_process_p50_ms"],
                                                        m["procrastinate_pickup_p50_ms"]),
        "pickup_p50_separate_vs_procrastinate": ratio(m["ours_pickup_separate_p50_ms"],
                                                      m["procrastinate_pickup_p50_ms"]),
        "pickup_p99_in_process_vs_procrastinate": ratio(m["ours_pickup_in_process_p99_ms"],
                                                        m["procrastinate_pickup_p99_ms"]),
        "pickup_p99_separate_vs_procrastinate": ratio(m["ours_pickup_separate_p99_ms"],
                                                      m["procrastinate_pickup_p99_ms"]),
        "pickup_p50_separate_vs_arq": ratio(m["ours_pickup_separate_p50_ms"], m["arq_pickup_p50_ms"]),
        "concurrency_span_vs_procrastinate": ratio(m["ours_concurrency_span_seconds"],
                                                   m["procrastinate_concurrency_span_seconds"]),
        "concurrency_span_vs_arq": ratio(m["ours_concurrency_span_seconds"], m["arq_concurrency_span_seconds"]),
        "drain_vs_pgbench_8_clients": ratio(m["ours_drain_tasks_per_second"],
                                            m.get("pgbench_lives_per_second_8_clients", float("nan"))),
    }
    return {"medians": m, "ratios": ratios}


def check_targets(summary: dict[str, Any], scale: dict[str, Any] | None) -> list[list[object]]:
    m, r = summary["medians"], summary["ratios"]
    rows: list[list[object]] = [
        ["drain >= 5 x Procrastinate", f"{r['drain_vs_procrastinate']} x", verdict(r["drain_vs_procrastinate"] >= 5)],
        ["drain >= arq", f"{r['drain_vs_arq']} x", verdict(r["drain_vs_arq"] >= 1)],
        ["pickup p50 in process <= 0.5 x Procrastinate", f"{r['pickup_p50_in_process_vs_procrastinate']} x",
         verdict(r["pickup_p50_in_process_vs_procrastinate"] <= 0.5)],
        ["pickup p50 separate <= Procrastinate", f"{r['pickup_p50_separate_vs_procrastinate']} x",
         verdict(r["pickup_p50_separate_vs_procrastinate"] <= 1)],
        ["pickup p99 in process <= Procrastinate", f"{r['pickup_p99_in_process_vs_procrastinate']} x",
         verdict(r["pickup_p99_in_process_vs_procrastinate"] <= 1)],
        ["pickup p99 separate <= Procrastinate", f"{r['pickup_p99_separate_vs_procrastinate']} x",
         verdict(r["pickup_p99_separate_vs_procrastinate"] <= 1)],
        ["10,000 x 1 s tasks <= 4 s", f"{m['ours_concurrency_span_seconds']:.2f} s",
         verdict(m["ours_concurrency_span_seconds"] <= 4)],
        ["worker peak RSS <= 200 MB", f"{m['ours_concurrency_peak_rss_mb']:.1f} MB",
         verdict(m["ours_concurrency_peak_rss_mb"] <= 200)],
        ["API POST p99 <= 25 ms, 0 errors", f"{m['api_post_p99_ms']:.2f} ms, {m['api_post_errors']:.0f} errors",
         verdict(m["api_post_p99_ms"] <= 25 and m["api_post_errors"] == 0)],
        ["API GET p99 <= 30 ms, 0 errors", f"{m['api_get_p99_ms']:.2f} ms, {m['api_get_errors']:.0f} errors",
         verdict(m["api_get_p99_ms"] <= 30 and m["api_get_errors"] == 0)],
    ]
    if scale:
        sizes = sorted(scale["sizes"].values(), key=lambda entry: entry["rows"])
        smallest, largest = sizes[0], sizes[-1]
        for name, query in largest["queries"].items():
            base = smallest["queries"][name]
            growth = ratio(query["p50_ms"], base["p50_ms"])
            rows.append([
                f"{name} at {largest['rows']:,} rows: p50 <= 20, p99 <= 50 ms, <= 2 x at {smallest['rows']:,}",
                f"{query['p50_ms']:.2f} / {query['p99_ms']:.2f} ms, {growth} x",
                verdict(query["p50_ms"] <= 20 and query["p99_ms"] <= 50 and growth <= 2),
            ])
    return rows


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every script works")
    parser.add_argument("--no-anchors", action="store_true", help="leave out Procrastinate and arq")
    parser.add_argument("--no-scale", action="store_true", help="leave out the table-size benchmark")
    parser.add_argument("--no-api", action="store_true", help="leave out the API load benchmark")
    parser.add_argument("--output", type=Path, help="summary JSON (default: bench/results/summary-<time>.json)")
    args = parser.parse_args()

    anchors = not args.no_anchors and BENCH_PYTHON.exists()
    if not args.no_anchors and not anchors:
        print(f"NOTE: {BENCH_PYTHON} is missing, so Procrastinate and arq are left out; run `make bench-install`.")
    sizes = SMOKE if args.smoke else FULL
    run_dir = RESULTS_DIR / f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(run_dir, anchors)
    started = time.monotonic()

    rounds = []
    for number in range(1, args.rounds + 1):
        print(f"\n##### round {number} of {args.rounds}", flush=True)
        rounds.append(run_round(runner, sizes, args.no_api))
    scale = None if args.no_scale else runner.run("ours-scale", sys.executable, "ours.py",
                                                  ["scale", *sizes["scale"]], 1800)

    summary = summarize(rounds)
    print_table(f"Summary: medians of {args.rounds} rounds", ["figure", "median"],
                [[name, value] for name, value in summary["medians"].items()])
    print_table("Ratios (ours / theirs)", ["ratio", "value"], [[n, v] for n, v in summary["ratios"].items()])
    if scale:
        rows = []
        for entry in scale["sizes"].values():
            for name, query in entry["queries"].items():
                rows.append([entry["rows"], name, query["p50_ms"], query["p99_ms"]])
            rows.append([entry["rows"], "drain tasks/s", entry["drain_tasks_per_second"], None])
        print_table("Cost growth: dashboard queries and drain by table size", ["rows", "figure", "p50 ms", "p99 ms"],
                    rows)
    targets = check_targets(summary, scale)
    print_table("Targets", ["target", "measured", "verdict"], targets)

    path = write_result("summary", {
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "anchors": anchors,
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "summary": summary,
        "targets": [{"target": row[0], "measured": row[1], "verdict": row[2]} for row in targets],
        "scale": scale,
        "rounds": rounds,
        "raw_results_dir": str(run_dir),
    }, args.output)
    print(f"\nwrote {path}  ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
