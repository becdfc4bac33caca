"""Request and response bodies of the HTTP API."""

import math
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from app.models import TaskStatus, TaskType
from app.settings import get_settings

NAME_MAX_LENGTH = 200
# At least one character that is not a space, and no control characters (Unicode category Cc).
# check_name also rejects lone surrogates. They are not Unicode scalar values, so a JSON Schema
# string cannot contain them, and naming them in the pattern made schemathesis 4.32 ignore it.
NAME_CHARACTER = r"[^\u0000-\u001f\u007f-\u009f]"
NAME_PATTERN = rf"^{NAME_CHARACTER}*[^\s\u0000-\u001f\u007f-\u009f]{NAME_CHARACTER}*$"


class TaskCreateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Send weekly report", "type": "notification", "execution_time": 2.5},
                {"name": "Resize images", "type": "processing", "execution_time": 10, "failure_rate": 0.3},
            ]
        },
    )

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        description=f"1 to {NAME_MAX_LENGTH} characters, not only spaces, no control characters.",
        # Documents check_name in the OpenAPI spec, so that clients and schema-driven tests
        # know which names are valid. Validation itself is check_name's.
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    type: TaskType = Field(description="Handler that runs the task.")
    # strict: a JSON string such as "5" or a boolean is rejected instead of converted.
    # The bounds in json_schema_extra only document the validators below in the OpenAPI spec.
    execution_time: Annotated[
        float,
        Field(
            strict=True,
            description="Seconds the run sleeps, from 0 to MAX_EXECUTION_TIME.",
            json_schema_extra=lambda schema: schema.update(minimum=0, maximum=get_settings().max_execution_time),
        ),
    ]
    failure_rate: Annotated[
        float,
        Field(
            strict=True,
            description="Chance from 0 to 1 that one run fails, to show retries.",
            json_schema_extra={"minimum": 0, "maximum": 1},
        ),
    ] = 0.0

    @field_validator("name")
    @classmethod
    def check_name(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("name_blank", "name must contain a character other than spaces")
        for position, character in enumerate(value):
            category = unicodedata.category(character)
            if category == "Cc":
                raise PydanticCustomError(
                    "name_control_character",
                    "name must not contain control characters, found U+{code} at position {position}",
                    {"code": f"{ord(character):04X}", "position": position},
                )
            if category == "Cs":
                raise PydanticCustomError(
                    "name_surrogate",
                    "name must be valid Unicode text, found a lone surrogate U+{code} at position {position}",
                    {"code": f"{ord(character):04X}", "position": position},
                )
        return value

    @field_validator("execution_time")
    @classmethod
    def check_execution_time(cls, value: float) -> float:
        maximum = get_settings().max_execution_time
        if not math.isfinite(value):
            raise PydanticCustomError(
                "execution_time_not_finite",
                "execution_time must be a finite number of seconds from 0 to {maximum}, got {value}",
                {"maximum": maximum, "value": str(value)},
            )
        if value < 0 or value > maximum:
            raise PydanticCustomError(
                "execution_time_out_of_range",
                "execution_time must be between 0 and {maximum} seconds, got {value}",
                {"maximum": maximum, "value": value},
            )
        return float(value)

    @field_validator("failure_rate")
    @classmethod
    def check_failure_rate(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0 or value > 1:
            raise PydanticCustomError(
                "failure_rate_out_of_range",
                "failure_rate must be between 0 and 1 (0 % to 100 %), got {value}",
                {"value": str(value)},
            )
        return float(value)


TASK_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "name": "Send weekly report",
    "type": "notification",
    "execution_time": 2.5,
    "failure_rate": 0.0,
    "status": "running",
    "attempts": 0,
    "max_attempts": 3,
    "run_at": "2026-12-04T20:30:00.000000Z",
    "last_error": None,
    "created_at": "2026-12-04T20:30:00.000000Z",
    "updated_at": "2026-12-04T20:30:00.012000Z",
    "started_at": "2026-12-04T20:30:00.012000Z",
    "finished_at": None,
}


class TaskRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [TASK_EXAMPLE]})

    id: int
    name: str
    type: TaskType
    execution_time: float
    failure_rate: float
    status: TaskStatus
    attempts: int = Field(description="Failed runs so far.")
    max_attempts: int = Field(description="Runs the task gets at most.")
    run_at: datetime = Field(description="Earliest time of the next run.")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = Field(description="Start of the current or last run.")
    finished_at: datetime | None


class StatusCounts(BaseModel):
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class TaskListRead(BaseModel):
    items: list[TaskRead]
    total: int = Field(description="Tasks that match the filters, at most 10,000 when a type or name filter is set.")
    total_is_exact: bool = Field(description="False when total stopped at its limit and more tasks match.")
    limit: int
    offset: int
    next_before: int | None = Field(
        description="Pass as `before` to get the next page without repeats; null on the last page."
    )
    counts: StatusCounts = Field(description="Tasks per status over the whole table, ignoring filters.")


class TaskLogRead(BaseModel):
    id: int
    task_id: int
    attempt: int = Field(description="Run the line belongs to; 0 before the first run.")
    level: str
    message: str
    created_at: datetime


class ErrorRead(BaseModel):
    detail: str


class ConflictRead(BaseModel):
    detail: str
    task_id: int
    status: TaskStatus


class HealthRead(BaseModel):
    status: str
    database: str
    worker: str
    detail: str | None = None
