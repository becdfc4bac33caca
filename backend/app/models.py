"""Tables of the task runner. The migration in alembic/versions creates them with their triggers."""

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"



class TaskType(enum.StrEnum):
    NOTIFICATION = "notification"
    PROCESSING = "processing"


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    execution_time: Mapped[float] = mapped_column(Double)
    failure_rate: Mapped[float] = mapped_column(Double, server_default=text("0"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_owner: Mapped[uuid.UUID | None] = mapped_column(UUID)
    lease_token: Mapped[uuid.UUID | None] = mapped_column(UUID)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text, unique=True)
    request_hash: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')", name="status_known"
        ),
        CheckConstraint("type IN ('notification', 'processing')", name="type_known"),
        CheckConstraint("execution_time >= 0", name="execution_time_not_negative"),
        CheckConstraint("failure_rate >= 0 AND failure_rate <= 1", name="failure_rate_in_unit_range"),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts_within_max"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
        CheckConstraint(
            "(status = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="lease_only_while_running",
        ),
        # The worker's claim: the oldest due pending tasks.
        Index("tasks_claim_idx", "run_at", "id", postgresql_where=text("status = 'pending'")),
        # Lease recovery scans running tasks only.
        Index("tasks_lease_idx", "lease_expires_at", postgresql_where=text("status = 'running'")),
        # Dashboard list, newest first by id, filtered by status or type.
        Index("tasks_status_id_idx", "status", text("id DESC")),
        Index("tasks_type_id_idx", "type", text("id DESC")),
    )


class TaskLog(Base):
    __tablename__ = "task_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    level: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("level IN ('INFO', 'WARNING', 'ERROR')", name="level_known"),
        Index("task_logs_task_idx", "task_id", "id"),
    )


class TaskStatusCount(Base):
    """Running per-status totals, kept by statement triggers so the dashboard never counts 1 M rows."""

    __tablename__ = "task_status_counts"

    status: Mapped[str] = mapped_column(Text, primary_key=True)
    # Several rows per status spread concurrent writers over different rows.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class Worker(Base):
    """One row per live worker process, renewed with its leases."""

    __tablename__ = "workers"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
