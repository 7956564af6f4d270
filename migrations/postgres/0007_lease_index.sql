-- Outcome writes (complete, heartbeat, release) name their jobs by id and
-- filter `state = 'running'`. With the lease index partial on that same
-- predicate, the planner drove those writes from the lease index and
-- visited every dead entry it held: 146 ms for one batch of 130 completions
-- under load. Keyed on the lease instead, the index still serves the
-- rescue (`lease_expires_at < now()` implies the predicate) and no longer
-- matches the outcome writes, which go through the primary key.
DROP INDEX jobs_running_lease;
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
