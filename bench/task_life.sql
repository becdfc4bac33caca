-- One task life as three transactions, each its own autocommit statement: insert it pending,
-- claim it (pending -> running), finish it (running -> completed). pgbench reports one
-- execution of this script as one transaction, so its tps is task lives per second.
INSERT INTO task_lives (status) VALUES ('pending') RETURNING id \gset
UPDATE task_lives SET status = 'running', started_at = now() WHERE id = :id AND status = 'pending';
UPDATE task_lives SET status = 'completed', finished_at = now() WHERE id = :id AND status = 'running';
