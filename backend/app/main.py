"""Build the FastAPI application: settings, middleware, routes, error handlers and the worker."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import crud, metrics
from app.api.tasks import router as tasks_router
from app.db import create_engine
from app.logs import configure_logging
from app.middleware import BodySizeLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from app.schemas import HealthRead
from app.settings import get_settings
from app.worker import Worker, heartbeat_stale_after

logger = logging.getLogger(__name__)

# Seconds /health waits for the database before it reports it unavailable.
HEALTH_TIMEOUT_SECONDS = 3.0
DATABASE_UNAVAILABLE = "the database is unavailable; retry in a few seconds"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    engine = create_engine(settings)
    app.state.engine = engine
    app.state.worker = None
    worker_task: asyncio.Task[None] | None = None
    if settings.worker_enabled:
        app.state.worker = Worker(engine, settings)
        worker_task = asyncio.create_task(app.state.worker.run(), name="worker")

    yield

    if app.state.worker is not None and worker_task is not None:
        await app.state.worker.stop()
        await worker_task
    await engine.dispose()


# asyncpg errors that mean the server cannot serve this process now: it is starting, shutting
# down or full, or it rejects the configured credentials or database name. Each is a 503, not a bug.
DATABASE_UNAVAILABLE_CAUSES = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    OSError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError, *DATABASE_UNAVAILABLE_CAUSES)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, DBAPIError) and isinstance(
        exc.orig.__cause__ if exc.orig is not None else None, DATABASE_UNAVAILABLE_CAUSES
    )


def describe_validation_error(error: dict) -> dict:
    """Prefix a pydantic message with its field, so that each message names what it is about.

    The rejected input is left out: NaN, infinities and lone surrogates cannot be written as
    JSON, and a 64 KB value echoed back is of no use.
    """
    if error.get("type") == "json_invalid":
        position = error.get("loc", ("body", "?"))[-1]
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return {
            "type": "json_invalid",
            "loc": ["body"],
            "msg": f"body: the request body is not valid JSON ({reason} at character {position})",
        }
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    field = ".".join(location)
    message = str(error.get("msg", "invalid value"))
    if field and not message.startswith(field):
        message = f"{field}: {message}"
    return {"type": error.get("type", "value_error"), "loc": list(error.get("loc", ())), "msg": message}


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level)

    # FastAPIOffline serves Swagger UI and ReDoc from files in its wheel instead of a CDN,
    # so /docs works on machines without internet access.
    app = FastAPIOffline(
        title="Task runner",
        summary="Create background tasks and follow them through pending, running, completed or failed.",
        version="1.0.0",
        lifespan=lifespan,
        # /tasks and /tasks/ are both declared; no path redirects.
        redirect_slashes=False,
    )
    app.include_router(tasks_router)

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [describe_validation_error(error) for error in exc.errors()]
        return JSONResponse(status_code=422, content=jsonable_encoder({"detail": errors}))

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI rejects a body it cannot decode (invalid UTF-8) with this bare 400.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            error = {"type": "json_invalid", "loc": ["body"], "msg": "body: the request body is not valid UTF-8 JSON"}
            return JSONResponse(status_code=422, content={"detail": [error]})
        return await http_exception_handler(request, exc)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    @app.exception_handler(PoolTimeoutError)
    async def handle_database_error(request: Request, exc: Exception) -> JSONResponse:
        if not is_database_unavailable(exc):
            raise exc
        logger.warning(
            "database unavailable during %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            extra={"event": "database_unavailable"},
        )
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": DATABASE_UNAVAILABLE},
            headers={"Retry-After": "2"},
        )

    @app.get("/health", response_model=HealthRead, tags=["service"], responses={503: {"model": HealthRead}})
    async def health() -> JSONResponse:
        """Report whether the database responds and some worker renewed its heartbeat recently."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                async with app.state.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    heartbeat_age = await crud.seconds_since_last_heartbeat(conn)
        except (TimeoutError, DBAPIError, OSError, PoolTimeoutError, asyncpg.PostgresError) as exc:
            logger.warning("health check: database unavailable: %s", type(exc).__name__, extra={"event": "unhealthy"})
            body = HealthRead(status="unavailable", database="unavailable", worker="unknown", detail=DATABASE_UNAVAILABLE)
            return JSONResponse(status_code=503, content=body.model_dump())

        stale_after = heartbeat_stale_after(settings)
        if heartbeat_age is None or heartbeat_age > stale_after:
            detail = (
                "no worker has sent a heartbeat"
                if heartbeat_age is None
                else f"the newest worker heartbeat is {heartbeat_age:.0f} s old (limit {stale_after:.0f} s)"
            )
            body = HealthRead(status="unavailable", database="ok", worker="stale", detail=detail)
            return JSONResponse(status_code=503, content=body.model_dump())
        return JSONResponse(content=HealthRead(status="ok", database="ok", worker="ok").model_dump())

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def read_metrics() -> PlainTextResponse:
        """Prometheus metrics of this process, with the number of tasks per status."""
        async with app.state.engine.connect() as conn:
            counts = await crud.count_tasks_by_status(conn)
        for task_status, count in counts.items():
            metrics.QUEUE_DEPTH.labels(status=task_status).set(count)
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # Added innermost first. CORS wraps everything, so error responses carry its headers too.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=False,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "Idempotency-Key", "X-Request-ID"],
        expose_headers=["Location", "Retry-After", "X-Request-ID"],
        max_age=600,
    )
    return app


app = create_app()
