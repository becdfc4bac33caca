"""Print the Markdown tables of docs/benchmarks.md from a summary JSON written by run_all.py.

  python bench/report.py bench/records/2026-12-05-0000.json
"""

import json
import sys
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float) and abs(value) >= 100:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def per_round(rounds: list[dict[str, Any]], *path: str) -> list[Any]:
    values = []
    for one in rounds:
        value: Any = one
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values.append(value)
    return values


def main() -> None:
    document = json.loads(Path(sys.argv[1]).read_text())
    rounds = document["rounds"]
    medians = document["summary"]["medians"]
    ratios = document["summary"]["ratios"]

    print("### Drain and concurrency (one worker process)\n")
    rows = []
    for label, key, metric in (
        ("drain, 10,000 no-op: tasks/s", "drain", "tasks_per_second"),
        ("10,000 x 1 s: span s", "concurrency", "span_seconds"),
        ("10,000 x 1 s: peak RSS MB", "concurrency", "peak_rss_mb"),
    ):
        for system in ("ours", "procrastinate", "arq"):
            values = per_round(rounds, f"{system}_{key}", metric)
            rows.append([label, system, *values, sorted(v for v in values if v is not None)[len(values) // 2]])
    print(table(["figure", "system", "round 1", "round 2", "round 3", "median"], rows))

    print("\n### Pickup latency, commit to start, ms\n")
    rows = []
    for system, mode in (("ours", "in_process"), ("ours", "separate"), ("procrastinate", "separate"),
                         ("arq", "separate")):
        for quantile in ("p50_ms", "p95_ms", "p99_ms"):
            values = per_round(rounds, f"{system}_pickup", mode, quantile)
            label = f"{system} ({mode.replace('_', ' ')})"
            rows.append([label, quantile.removesuffix("_ms"), *values, sorted(values)[len(values) // 2]])
    print(table(["system", "quantile", "round 1", "round 2", "round 3", "median"], rows))

    print("\n### pgbench ceiling, task lives/s\n")
    clients = list(rounds[0]["pgbench"]["lives_per_second"])
    print(table(["clients", "round 1", "round 2", "round 3", "median"],
                [[int(c), *per_round(rounds, "pgbench", "lives_per_second", c),
                  medians[f"pgbench_lives_per_second_{c}_clients"]] for c in clients]))

    print("\n### API at 200 req/s, 30 s per route\n")
    rows = []
    for route in ("post", "get"):
        for metric in ("p50_ms", "p99_ms", "max_ms", "errors", "achieved_rate"):
            values = per_round(rounds, "ours_api", route, metric)
            rows.append([f"{route.upper()} /tasks/", metric, *values, sorted(values)[len(values) // 2]])
    print(table(["route", "figure", "round 1", "round 2", "round 3", "median"], rows))

    print("\n### Ratios\n")
    print(table(["ratio (ours / theirs)", "value"], [[name, value] for name, value in ratios.items()]))

    if document.get("scale"):
        print("\n### Dashboard queries and drain by table size (medians of the passes)\n")
        rows = []
        for entry in document["scale"]["sizes"].values():
            for name, query in entry["queries"].items():
                rows.append([entry["rows"], name, query["p50_ms"], query["p99_ms"]])
            rows.append([entry["rows"], "drain tasks/s", entry["drain_tasks_per_second"], None])
        print(table(["rows", "query", "p50 ms", "p99 ms"], rows))

    print("\n### Targets\n")
    print(table(["target", "measured", "verdict"],
                [[t["target"], t["measured"], t["verdict"]] for t in document["targets"]]))


if __name__ == "__main__":
    main()
