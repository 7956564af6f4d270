-- The worker registry (issue 12): one row per running `kiln work`
-- process, written by the process itself at start, at every heartbeat and
-- removed on a clean stop. A row whose heartbeat is older than its
-- `lost_after_ms` belongs to a lost process (its jobs' leases have expired
-- by then, and the lease rescue takes them back); the maintenance loop
-- deletes such rows an hour later, so the table holds little more than
-- the live processes.
CREATE TABLE workers (
    id               text        PRIMARY KEY,
    host             text        NOT NULL,
    pid              integer     NOT NULL,
    version          text        NOT NULL,
    queues           text[]      NOT NULL,
    concurrency      integer     NOT NULL,
    started_at       timestamptz NOT NULL,
    heartbeat_at     timestamptz NOT NULL,
    -- Jobs it was running at its last heartbeat.
    running          integer     NOT NULL DEFAULT 0,
    last_claim_at    timestamptz,
    -- It is shutting down: it claims nothing on purpose while its running
    -- jobs finish, so it is not stalled.
    stopping         boolean     NOT NULL DEFAULT false,
    -- The bounds it is judged by, from its own settings (lease, heartbeat
    -- and poll intervals): no other process knows them.
    lost_after_ms    bigint      NOT NULL,
    stalled_after_ms bigint      NOT NULL
);
