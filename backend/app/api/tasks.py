"""HTTP routes for tasks: parse the request, call crud, map domain errors to status codes."""

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import crud, metrics
from app.crud import ClaimedRun
from app.exceptions import (
    IdempotencyConflictError,
    InvalidTransitionError,
    QueueFullError,
    TaskNotDeletableError,
    TaskNotFoundError,
)
from app.models import TaskStatus, TaskType
from app.schemas import (
    ConflictRead,
    ErrorRead,
    StatusCounts,
    TaskCreateRequest,
    TaskListRead,
    TaskLogRead,
    TaskRead,
)
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/tasks", tags=["tasks"])

# Seconds a client should wait before retrying a create refused by MAX_PENDING_TASKS.
QUEUE_FULL_RETRY_AFTER_SECONDS = 5
MAX_OFFSET = 1_000_000
IDEMPOTENCY_KEY_MAX_LENGTH = 200

NOT_FOUND = {404: {"model": ErrorRead, "description": "No task has this id."}}
CONFLICT = {409: {"model": ConflictRead, "description": "The task's status does not allow this."}}
UNAUTHORIZED = {401: {"model": ErrorRead, "description": "API_TOKEN is set and the bearer token is missing or wrong."}}


# Dependencies are async where they can be: FastAPI runs a sync dependency in a worker
# thread, and that hand-off showed up in profiles of GET /tasks/ under load.
async def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def current_settings() -> Settings:
    """Return the settings. get_settings is sync, so as a dependency it would run in a thread."""
    return get_settings()


async def autocommit_connection(
    engine: Annotated[AsyncEngine, Depends(get_engine)],
) -> AsyncIterator[AsyncConnection]:
    """Open a connection in autocommit mode, for routes whose statements each commit on their own.

    Under READ COMMITTED each statement takes its own snapshot whether or not a transaction
    is open, so for reads, and for a create whose insert is one statement, BEGIN and COMMIT
    would only add two round trips per request.
    """
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


async def write_connection(engine: Annotated[AsyncEngine, Depends(get_engine)]) -> AsyncIterator[AsyncConnection]:
    """A connection whose transaction commits when the route returns and rolls back on error."""
    async with engine.begin() as conn:
        yield conn


async def require_token(
    settings: Annotated[Settings, Depends(current_settings)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    if not settings.api_token:
        return
    expected = f"Bearer {settings.api_token}"
    if authorization is None or not secrets.compare_digest(authorization.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this API requires 'Authorization: Bearer <API_TOKEN>' on requests that change tasks",
            headers={"WWW-Authenticate": "Bearer"},
        )


def reject_nul_character(value: str | None) -> str | None:
    # PostgreSQL text cannot contain U+0000, so the query would fail in the database instead.
    if value is not None and "\x00" in value:
        raise PydanticCustomError(
            "q_nul_character",
            "q must not contain the NUL character (U+0000), found at position {position}",
            {"position": value.index("\x00")},
        )
    return value


TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Task id.")]
AutocommitConnection = Annotated[AsyncConnection, Depends(autocommit_connection)]
WriteConnection = Annotated[AsyncConnection, Depends(write_connection)]


def not_found(exc: TaskNotFoundError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


def conflict(task_id: int, current: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={"detail": message, "task_id": task_id, "status": current},
    )


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRead,
    responses={
        200: {"model": TaskRead, "description": "Replay: this Idempotency-Key already created the task."},
        409: {"model": ErrorRead, "description": "The Idempotency-Key was used with another body."},
        429: {"model": ErrorRead, "description": "MAX_PENDING_TASKS tasks are already pending."},
        **UNAUTHORIZED,
    },
    dependencies=[Depends(require_token)],
    summary="Create a task",
)
@router.post("", status_code=status.HTTP_201_CREATED, response_model=TaskRead, include_in_schema=False,
             dependencies=[Depends(require_token)])
async def create_task(
    body: TaskCreateRequest,
    request: Request,
    response: Response,
    conn: AutocommitConnection,
    settings: Annotated[Settings, Depends(current_settings)],
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
            description="Any unique string; repeating a request with the same key returns the same task.",
        ),
    ] = None,
) -> TaskRead | JSONResponse:
    """Store a pending task and return at once; a worker runs it in the background."""
    request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest() if idempotency_key else None
    # With a free slot in this process's worker, the task is claimed for it right after its
    # commit, in the same database call: no wake-up and no round trip before it starts.
    worker = getattr(request.app.state, "worker", None)
    claim_for = worker.id if worker is not None and worker.reserve_slot() else None
    claimed: list[ClaimedRun] = []
    try:
        task, created, claimed = await crud.create_task(
            conn,
            name=body.name,
            type=body.type,
            execution_time=body.execution_time,
            failure_rate=body.failure_rate,
            max_attempts=settings.max_attempts,
            max_pending=settings.max_pending_tasks,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            claim_for=claim_for,
            lease_seconds=settings.lease_seconds,
        )
    except IdempotencyConflictError as exc:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})
    except QueueFullError as exc:
        return JSONResponse(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            content={"detail": str(exc)},
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)},
        )
    finally:
        if claim_for is not None:
            # Gives the reserved slot back, and runs what was claimed (nothing on an error).
            await worker.adopt(claimed)

    # The task has committed on its own (autocommit), so any worker can see it now.
    response.headers["Location"] = f"/tasks/{task['id']}"
    if created:
        metrics.TASKS_CREATED.inc()
        if worker is not None and task["id"] not in {run.task_id for run in claimed}:
            # The create did not claim this task (no free slot, or an older task went first),
            # so the worker should look for it now.
            worker.wake()
    else:
        response.status_code = status.HTTP_200_OK
    return TaskRead.model_validate(task)


@router.get("/", response_model=TaskListRead, summary="List tasks, newest first")
@router.get("", response_model=TaskListRead, include_in_schema=False)
async def list_tasks(
    conn: AutocommitConnection,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1 to 200.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"Rows to skip, 0 to {MAX_OFFSET}.")] = 0,
    status_filter: Annotated[
        list[TaskStatus] | None, Query(alias="status", description="Repeat to match several statuses.")
    ] = None,
    type: Annotated[TaskType | None, Query(description="Only tasks of this type.")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Case-insensitive text the name contains."),
        AfterValidator(reject_nul_character),
    ] = None,
    before: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**63 - 1,
            description="Cursor: only tasks older than this id (next_before of the previous page). "
            "Unlike offset, new tasks never shift the pages.",
        ),
    ] = None,
) -> TaskListRead | JSONResponse:
    if before is not None and offset:
        return JSONResponse(
            status_code=422,
            content={
                "detail": [
                    {
                        "loc": ["query", "offset"],
                        "type": "value_error",
                        "msg": "offset: use either offset or before, not both; with before, leave offset out",
                    }
                ]
            },
        )
    task_filter = crud.TaskFilter(
        statuses=tuple(status_filter or ()), type=type, name_contains=q, before_id=before
    )
    items = await crud.list_tasks(conn, task_filter, limit=limit, offset=offset)
    counts = await crud.count_tasks_by_status(conn)
    total, total_is_exact = await crud.count_tasks(conn, task_filter, counts)
    return TaskListRead(
        items=[TaskRead.model_validate(item) for item in items],
        total=total,
        total_is_exact=total_is_exact,
        limit=limit,
        offset=offset,
        next_before=items[-1]["id"] if len(items) == limit else None,
        counts=StatusCounts(**counts),
    )


@router.get("/{task_id}", response_model=TaskRead, responses=NOT_FOUND, summary="Get one task")
async def get_task(task_id: TaskId, conn: AutocommitConnection) -> TaskRead:
    try:
        return TaskRead.model_validate(await crud.get_task(conn, task_id))
    except TaskNotFoundError as exc:
        raise not_found(exc) from exc


@router.get(
    "/{task_id}/logs", response_model=list[TaskLogRead], responses=NOT_FOUND, summary="Execution log, oldest first"
)
async def list_task_logs(task_id: TaskId, conn: AutocommitConnection) -> list[TaskLogRead]:
    try:
        logs = await crud.list_task_logs(conn, task_id)
    except TaskNotFoundError as exc:
        raise not_found(exc) from exc
    return [TaskLogRead.model_validate(line) for line in logs]


@router.post(
    "/{task_id}/cancel",
    response_model=TaskRead,
    responses={**NOT_FOUND, **CONFLICT, **UNAUTHORIZED},
    dependencies=[Depends(require_token)],
    summary="Cancel a pending or running task",
)
async def cancel_task(task_id: TaskId, conn: WriteConnection) -> TaskRead | JSONResponse:
    try:
        task = await crud.cancel_task(conn, task_id)
    except TaskNotFoundError as exc:
        raise not_found(exc) from exc
    except InvalidTransitionError as exc:
        return conflict(task_id, exc.current, f"task {task_id} is already {exc.current}, so it cannot be cancelled")
    await conn.commit()
    metrics.TASKS_CANCELLED.inc()
    return TaskRead.model_validate(task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT, **UNAUTHORIZED},
    dependencies=[Depends(require_token)],
    summary="Delete a finished task and its logs",
)
async def delete_task(task_id: TaskId, conn: WriteConnection) -> Response:
    try:
        await crud.delete_task(conn, task_id)
    except TaskNotFoundError as exc:
        raise not_found(exc) from exc
    except TaskNotDeletableError as exc:
        return conflict(task_id, exc.current, str(exc))
    await conn.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
