"""Run every test suite for `make test` and print one closing line that sums them.

Suites: backend (pytest), frontend store and component tests (Vitest), browser tests
(Playwright in Debian's Chromium). Each suite runs even when an earlier one failed, so one
run shows every failure. The closing line reads `N passed, N failed`; a suite that ends
without its result file counts as one failure. Exit status 0 only when nothing failed.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKEND_DIR = REPO_ROOT / "backend"
FRONTEND_DIR = REPO_ROOT / "frontend"
RESULTS_DIR = REPO_ROOT / ".data" / "test-results"


@dataclass
class SuiteResult:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0


def run(command: list[str], cwd: Path) -> int:
    print(f"\n=== {' '.join(command)} (in {cwd.relative_to(REPO_ROOT)}) ===", flush=True)
    return subprocess.run(command, cwd=cwd, env=os.environ.copy(), check=False).returncode


def run_backend() -> SuiteResult:
    report = RESULTS_DIR / "backend.xml"
    report.unlink(missing_ok=True)
    exit_code = run([sys.executable, "-m", "pytest", f"--junitxml={report}", "-p", "no:cacheprovider"], BACKEND_DIR)
    result = SuiteResult("backend (pytest)")
    if not report.exists():
        result.failed = 1
        return result
    root = ElementTree.parse(report).getroot()
    for suite in root.iter("testsuite"):
        total = int(suite.get("tests", 0))
        failures = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        result.failed += failures
        result.skipped += skipped
        result.passed += total - failures - skipped
    if exit_code not in (0, 1) and result.failed == 0:
        result.failed = 1
    return result


def run_vitest() -> SuiteResult:
    report = FRONTEND_DIR / "test-results" / "vitest.json"
    report.unlink(missing_ok=True)
    exit_code = run(["npm", "run", "--silent", "test:unit"], FRONTEND_DIR)
    result = SuiteResult("frontend unit (Vitest)")
    if not report.exists():
        result.failed = 1
        return result
    data = json.loads(report.read_text())
    result.passed = data.get("numPassedTests", 0)
    result.failed = data.get("numFailedTests", 0)
    result.skipped = data.get("numPendingTests", 0) + data.get("numTodoTests", 0)
    if exit_code != 0 and result.failed == 0:
        result.failed = 1
    return result


def run_playwright() -> SuiteResult:
    report = FRONTEND_DIR / "test-results" / "playwright.json"
    report.unlink(missing_ok=True)
    exit_code = run(["npm", "run", "--silent", "test:e2e"], FRONTEND_DIR)
    result = SuiteResult("browser (Playwright)")
    if not report.exists():
        result.failed = 1
        return result
    stats = json.loads(report.read_text()).get("stats", {})
    result.passed = stats.get("expected", 0) + stats.get("flaky", 0)
    result.failed = stats.get("unexpected", 0)
    result.skipped = stats.get("skipped", 0)
    if exit_code != 0 and result.failed == 0:
        result.failed = 1
    return result


def main() -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = [run_backend(), run_vitest(), run_playwright()]

    print("\n=== summary ===")
    for result in results:
        print(f"{result.name}: {result.passed} passed, {result.failed} failed, {result.skipped} skipped")
    passed = sum(result.passed for result in results)
    failed = sum(result.failed for result in results)
    skipped = sum(result.skipped for result in results)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
