-- The one table that is the truth for clients, workers and operators.
-- Same columns as on Postgres; ids are text UUIDs, times are unix milliseconds.
CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY NOT NULL,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    owner            TEXT,
    payload          TEXT    NOT NULL,
    schema_version   INTEGER NOT NULL DEFAULT 1,
    state            TEXT    NOT NULL CHECK (state IN
                       ('scheduled','available','running','retryable','succeeded','failed','cancelled')),
    stage            TEXT,
    progress         INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    priority         INTEGER NOT NULL DEFAULT 0,
    fair_seq         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at           INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    token            INTEGER NOT NULL DEFAULT 0,
    rescues          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    errors           TEXT    NOT NULL DEFAULT '[]',
    idempotency_key  TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL
);

CREATE INDEX jobs_claim ON jobs (queue, priority DESC, fair_seq, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX jobs_owner ON jobs (owner, id DESC);
CREATE INDEX jobs_owner_pending ON jobs (owner)
    WHERE state IN ('available', 'scheduled', 'retryable', 'running');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(owner, ''), kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE queues (
    name       TEXT    PRIMARY KEY NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
