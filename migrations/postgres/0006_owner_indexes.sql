-- System jobs (no owner) are never listed or counted by owner: keep them
-- out of the owner indexes, so each of their state changes writes two
-- index entries fewer. Queries filter `owner = $1`, which implies
-- `owner IS NOT NULL`, so the planner still uses these.
DROP INDEX jobs_owner;
CREATE INDEX jobs_owner ON jobs (owner, id DESC) WHERE owner IS NOT NULL;
DROP INDEX jobs_owner_pending;
CREATE INDEX jobs_owner_pending ON jobs (owner)
    WHERE owner IS NOT NULL AND state IN ('available', 'scheduled', 'retryable', 'running');
