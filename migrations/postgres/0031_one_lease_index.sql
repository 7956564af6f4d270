-- One index for running jobs instead of two, and none partial on
-- `state = 'running'`.
--
-- `jobs_running_queue` (0024) was partial on `state = 'running'`, the
-- predicate every outcome write (complete, fail, release, heartbeat)
-- filters on. As 0007 found for the old lease index, the planner then
-- drove those writes from it: a completion of 50 jobs read every running
-- job of every worker (and the dead entries of those that finished
-- lately) into a hash join instead of probing 50 primary keys. And each
-- claim paid an entry in it besides the one in `jobs_leased`.
--
-- A lease is held exactly while a job runs (the constraint below now
-- says so), so the running jobs of a queue are its leased ones: one index
-- keyed on (queue, lease) counts them for a capped claim and lists the
-- expired for the rescue (running jobs only: small however long the
-- backlog).

-- Rows from before the constraint: a lease outside `running` means nothing;
-- a running job without one is given an expired one, so the rescue takes it.
UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
WHERE state <> 'running' AND lease_expires_at IS NOT NULL;
UPDATE jobs SET lease_expires_at = now()
WHERE state = 'running' AND lease_expires_at IS NULL;

ALTER TABLE jobs ADD CONSTRAINT jobs_lease_while_running
    CHECK ((state = 'running') = (lease_expires_at IS NOT NULL));

DROP INDEX jobs_running_queue;
DROP INDEX jobs_leased;
CREATE INDEX jobs_leased ON jobs (queue, lease_expires_at) WHERE lease_expires_at IS NOT NULL;
