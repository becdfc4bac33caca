"""Add claim_due_tasks() and the create_task procedure, which can claim right after its commit.

Take an API process whose own worker has a free slot. A task that it creates is committed as
pending and then claimed for that worker in a second transaction of the same CALL. So the
claim needs no wake-up and no second round trip from the worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Oldest due tasks first. SKIP LOCKED lets several workers claim at once. So an empty result
# can also mean that another worker has locked the rows right now, not that none are due.
#
# Planning this statement took about 100 us, half of a claim on an empty queue, because the
# sessions of the app set plan_cache_mode = force_custom_plan. This function sets it back to
# auto, so PL/pgSQL can reuse a generic plan while that plan costs no more than custom ones.
# = ANY (ARRAY(...)) keeps the UPDATE on the primary key in a generic plan too: a join there
# became a sequential scan once the table held 10,000 pending rows.
CLAIM_FUNCTION = """
CREATE FUNCTION claim_due_tasks(worker uuid, max_count integer, lease_seconds double precision)
RETURNS SETOF tasks LANGUAGE plpgsql SET plan_cache_mode = auto AS $$
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT pending.id FROM tasks pending
        WHERE pending.status = 'pending' AND pending.run_at <= now()
        ORDER BY pending.run_at, pending.id
        LIMIT max_count
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE tasks t
        SET status = 'running', started_at = now(), updated_at = now(),
            lease_owner = worker, lease_token = gen_random_uuid(),
            lease_expires_at = now() + make_interval(secs => lease_seconds)
        WHERE t.id = ANY (ARRAY(SELECT due.id FROM due))
        RETURNING t.*
    ), logged AS (
        INSERT INTO task_logs (task_id, attempt, level, message)
        SELECT c.id, c.attempts + 1, 'INFO', 'run ' || (c.attempts + 1) || ' started' FROM claimed c
    )
    SELECT * FROM claimed c ORDER BY c.id;
END
$$;
"""

# The insert trigger wakes the workers, except for a task that its create claims at once,
# because waking them would only make each of them run a claim that finds nothing.
INSERT_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_status_counts AS c (status, shard, count)
    SELECT status, floor(random() * 16)::smallint, count(*) FROM new_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    PERFORM pg_notify('tasks_pending', '')
    WHERE EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending')
      AND current_setting('taskrunner.claim_on_commit', true) IS DISTINCT FROM 'on';
    RETURN NULL;
END
$$;
"""

# As migration 0001 created it.
PREVIOUS_INSERT_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_status_counts AS c (status, shard, count)
    SELECT status, floor(random() * 16)::smallint, count(*) FROM new_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET count = c.count + EXCLUDED.count;
    PERFORM pg_notify('tasks_pending', '') WHERE EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending');
    RETURN NULL;
END
$$;
"""

# The queue check and the insert are one statement. COMMIT inside a procedure is allowed
# only when the CALL runs outside a transaction block, so claim_limit > 0 needs an
# autocommit connection; with 0 the procedure never commits and works in any transaction.
# When the claim fails or takes an older task, the new task is still pending: the procedure
# then wakes the workers itself, as the insert trigger would have.
CREATE_PROCEDURE = """
CREATE PROCEDURE create_task(
    p_name text, p_type text, p_execution_time double precision, p_failure_rate double precision,
    p_max_attempts integer, p_idempotency_key text, p_request_hash text, p_max_pending bigint,
    p_claim_worker uuid, p_claim_limit integer, p_lease_seconds double precision,
    OUT pending_before bigint, OUT task tasks, OUT claimed tasks[])
LANGUAGE plpgsql AS $$
DECLARE
    created record;
BEGIN
    IF p_claim_limit > 0 THEN
        PERFORM set_config('taskrunner.claim_on_commit', 'on', true);
    END IF;
    WITH queue AS (
        SELECT coalesce(sum(c.count), 0) AS pending FROM task_status_counts c WHERE c.status = 'pending'
    ), inserted AS (
        INSERT INTO tasks (name, type, execution_time, failure_rate, max_attempts, idempotency_key, request_hash)
        SELECT p_name, p_type, p_execution_time, p_failure_rate, p_max_attempts, p_idempotency_key, p_request_hash
        FROM queue WHERE queue.pending < p_max_pending
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING *
    ), logged AS (
        INSERT INTO task_logs (task_id, attempt, level, message)
        SELECT i.id, 0, 'INFO', 'task created' FROM inserted i
    )
    SELECT q.pending, i AS row INTO created FROM queue q LEFT JOIN inserted i ON TRUE;
    pending_before := created.pending;
    task := created.row;
    IF (task).id IS NULL OR p_claim_limit < 1 THEN
        RETURN;
    END IF;
    COMMIT;
    BEGIN
        claimed := ARRAY(SELECT c FROM claim_due_tasks(p_claim_worker, p_claim_limit, p_lease_seconds) c);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'claim after creating task % failed: %', (task).id, SQLERRM;
        claimed := NULL;
    END;
    IF claimed IS NULL OR NOT EXISTS (SELECT 1 FROM unnest(claimed) c WHERE c.id = (task).id) THEN
        PERFORM pg_notify('tasks_pending', '');
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(CLAIM_FUNCTION)
    op.execute(INSERT_TRIGGER_FUNCTION)
    op.execute(CREATE_PROCEDURE)


def downgrade() -> None:
    op.execute("DROP PROCEDURE IF EXISTS create_task")
    op.execute(PREVIOUS_INSERT_TRIGGER_FUNCTION)
    op.execute("DROP FUNCTION IF EXISTS claim_due_tasks")
