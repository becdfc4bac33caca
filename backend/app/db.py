"""The async engine shared by the API and the worker of one process."""

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=5,
        # Connections that died with a database restart are replaced on checkout instead
        # of failing the next request.
        pool_pre_ping=True,
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "server_settings": {
                "application_name": "taskrunner",
                # asyncpg prepares every statement. A generic plan made while the table was
                # small keeps scanning it sequentially after it grows, so plan each execution.
                "plan_cache_mode": "force_custom_plan",
                "idle_in_transaction_session_timeout": "60000",
            },
        },
    )
