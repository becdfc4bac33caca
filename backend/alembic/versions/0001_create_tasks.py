"""Create tasks, task_logs, status counters and workers, with the lifecycle trigger.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same pairs as crud.ALLOWED_TRANSITIONS. A hand-written UPDATE goes through this too.
CHECK_TRANSITION_FUNCTION = """
CREATE FUNCTION tasks_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'task % is %, a final status, so it cannot change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND (OLD.status, NEW.status) NOT IN (
           ('pending', 'running'), ('running', 'completed'), ('running', 'failed'),
           ('running', 'pending'), ('pending', 'cancelled'), ('running', 'cancelled')) THEN
        RAISE EXCEPTION 'invalid transition of task % from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempts < OLD.attempts THEN
        RAISE EXCEPTION 'attempts of task % cannot go down from % to %', OLD.id, OLD.attempts, NEW.attempts
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
"""

# Statement triggers with transition tables keep task_status_counts exact in the same
# transaction. One shard per statement spreads concurrent writers over 16 rows per status,
# and the ORDER BY makes every statement lock counter rows in the same order (no deadlocks).
COUNT_FUNCTIONS = [
    """
CREATE FUNCTION tasks_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_status_counts AS c (status, shard, count)
    SELECT status, floor(random() * 16)::smallint, count(*) FROM new_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    PERFORM pg_notify('tasks_pending', '') WHERE EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending');
    RETURN NULL;
END
$$;
""",
    """
CREATE FUNCTION tasks_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_status_counts AS c (status, shard, count)
    SELECT status, floor(random() * 16)::smallint, sum(delta) FROM (
        SELECT status, -1 AS delta FROM old_rows
        UNION ALL
        SELECT status, 1 AS delta FROM new_rows
    ) AS changes
    GROUP BY status HAVING sum(delta) <> 0 ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END
$$;
""",
    """
CREATE FUNCTION tasks_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_status_counts AS c (status, shard, count)
    SELECT status, floor(random() * 16)::smallint, -count(*) FROM old_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    RETURN NULL;
END
$$;
""",
]


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("execution_time", sa.Double, nullable=False),
        sa.Column("failure_rate", sa.Double, nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("lease_owner", UUID),
        sa.Column("lease_token", UUID),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("request_hash", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')", name="status_known"
        ),
        sa.CheckConstraint("type IN ('notification', 'processing')", name="type_known"),
        sa.CheckConstraint("execution_time >= 0", name="execution_time_not_negative"),
        sa.CheckConstraint("failure_rate >= 0 AND failure_rate <= 1", name="failure_rate_in_unit_range"),
        sa.CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts_within_max"),
        sa.CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
        sa.CheckConstraint(
            "(status = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="lease_only_while_running",
        ),
    )
    op.create_index(
        "tasks_claim_idx", "tasks", ["run_at", "id"], postgresql_where=sa.text("status = 'pending'")
    )
    op.create_index(
        "tasks_lease_idx", "tasks", ["lease_expires_at"], postgresql_where=sa.text("status = 'running'")
    )
    # The dashboard lists newest first by id; the primary key serves the unfiltered list.
    op.create_index("tasks_status_id_idx", "tasks", ["status", sa.text("id DESC")])
    op.create_index("tasks_type_id_idx", "tasks", ["type", sa.text("id DESC")])

    op.create_table(
        "task_logs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.clock_timestamp()
        ),
        sa.Column("level", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.CheckConstraint("level IN ('INFO', 'WARNING', 'ERROR')", name="level_known"),
    )
    op.create_index("task_logs_task_idx", "task_logs", ["task_id", "id"])

    op.create_table(
        "task_status_counts",
        sa.Column("status", sa.Text, primary_key=True),
        sa.Column("shard", sa.SmallInteger, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )

    op.execute(CHECK_TRANSITION_FUNCTION)
    op.execute(
        "CREATE TRIGGER tasks_check_transition BEFORE UPDATE ON tasks "
        "FOR EACH ROW EXECUTE FUNCTION tasks_check_transition()"
    )
    for function in COUNT_FUNCTIONS:
        op.execute(function)
    op.execute(
        "CREATE TRIGGER tasks_count_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_inserted()"
    )
    op.execute(
        "CREATE TRIGGER tasks_count_updated AFTER UPDATE ON tasks "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_updated()"
    )
    op.execute(
        "CREATE TRIGGER tasks_count_deleted AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_deleted()"
    )
    # task_logs is append-only: rows leave only with their task (ON DELETE CASCADE).
    op.execute(
        """
        CREATE FUNCTION task_logs_reject_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'task_logs is append-only' USING ERRCODE = 'check_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER task_logs_append_only BEFORE UPDATE ON task_logs "
        "FOR EACH ROW EXECUTE FUNCTION task_logs_reject_update()"
    )

    # Name search ("contains") needs a trigram index to stay fast on large tables. pg_trgm
    # ships with PostgreSQL's contrib, which some embedded builds leave out; without it the
    # search still works, as a scan.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
                CREATE EXTENSION IF NOT EXISTS pg_trgm;
                CREATE INDEX tasks_name_trgm_idx ON tasks USING gin (name gin_trgm_ops);
            END IF;
        END
        $$;
        """
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("task_status_counts")
    op.drop_table("task_logs")
    op.drop_table("tasks")
    op.execute("DROP FUNCTION IF EXISTS task_logs_reject_update()")
    op.execute("DROP FUNCTION IF EXISTS tasks_count_inserted()")
    op.execute("DROP FUNCTION IF EXISTS tasks_count_updated()")
    op.execute("DROP FUNCTION IF EXISTS tasks_count_deleted()")
    op.execute("DROP FUNCTION IF EXISTS tasks_check_transition()")
