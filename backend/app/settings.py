"""Service settings, read once from the environment and `.env`."""

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # An empty variable (as copied from .env.example) means "use the default".
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/tasks",
        description="SQLAlchemy URL of the PostgreSQL database, with the asyncpg driver.",
    )
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections kept per process.")
    cors_origins: list[str] = Field(
        default=["http://localhost:3000", "http://127.0.0.1:3000"],
        description="Origins allowed to call the API from a browser, as a JSON list.",
    )

    max_attempts: int = Field(default=3, ge=1, le=100, description="Runs a task gets before it is failed for good.")
    retry_backoff_base_seconds: float = Field(default=1.0, ge=0, le=3600)
    retry_backoff_max_seconds: float = Field(default=30.0, ge=0, le=86400)

    worker_enabled: bool = Field(default=True, description="Run a worker inside the API process.")
    worker_concurrency: int = Field(default=200, ge=1, le=100_000, description="Tasks one worker runs at once.")
    worker_batch_size: int = Field(default=200, ge=1, le=10_000, description="Tasks claimed per statement.")
    worker_poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    lease_seconds: float = Field(default=30.0, ge=1, le=3600, description="Seconds a running task's lease lasts between renewals.")
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)

    max_execution_time: float = Field(default=3600.0, gt=0, le=86400, description="Largest execution_time in seconds.")
    max_pending_tasks: int = Field(default=100_000, ge=1, description="Pending tasks beyond which POST /tasks/ returns 429.")
    api_token: str = Field(default="", description="Bearer token required by mutating requests; empty turns it off.")
    log_level: str = Field(default="INFO")

    @field_validator("database_url")
    @classmethod
    def require_asyncpg_driver(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if scheme != "postgresql+asyncpg":
            raise ValueError(f"DATABASE_URL must start with postgresql+asyncpg://, got {scheme}://")
        return value

    @field_validator("log_level")
    @classmethod
    def require_known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return level

    @field_validator("cors_origins")
    @classmethod
    def reject_wildcard_origin(cls, value: list[str]) -> list[str]:
        # A wildcard would let any site drive the API from its visitors' browsers.
        if "*" in value:
            raise ValueError("CORS_ORIGINS must list origins explicitly; '*' is not allowed")
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
