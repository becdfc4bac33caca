"""Logging set-up: one line per record with its structured fields as key=value pairs."""

import contextvars
import logging

# Set by the request-id middleware for the duration of one HTTP request.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

FIELDS = (
    "event",
    "task_id",
    "attempt",
    "status",
    "worker_id",
    "request_id",
    "error",
    "duration_seconds",
    "failures",
    "running",
    "concurrency",
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None) is not None
        )
        return f"{line} {fields}" if fields else line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log repeats every request; keep it but route it through our handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
