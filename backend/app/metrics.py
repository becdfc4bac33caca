"""Prometheus metrics of the API and the worker, served at GET /metrics."""

from prometheus_client import Counter, Gauge, Histogram

TASKS_CREATED = Counter("taskrunner_tasks_created_total", "Tasks created through the API.")
TASKS_STARTED = Counter("taskrunner_tasks_started_total", "Runs started by this process's worker.")
TASKS_COMPLETED = Counter("taskrunner_tasks_completed_total", "Runs that completed their task.")
TASKS_FAILED = Counter("taskrunner_tasks_failed_total", "Tasks failed for good after their last run.")
TASKS_RETRIED = Counter("taskrunner_tasks_retried_total", "Failed runs followed by a scheduled retry.")
TASKS_RECOVERED = Counter(
    "taskrunner_tasks_recovered_total", "Runs taken back after their worker stopped renewing the lease."
)
TASKS_CANCELLED = Counter("taskrunner_tasks_cancelled_total", "Tasks cancelled through the API.")
QUEUE_DEPTH = Gauge("taskrunner_tasks", "Tasks in the database by status.", ["status"])
RUN_SECONDS = Histogram(
    "taskrunner_run_duration_seconds",
    "Wall time of one run's handler.",
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
CLAIM_SECONDS = Histogram(
    "taskrunner_claim_duration_seconds",
    "Time of one claim statement, commit included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)
