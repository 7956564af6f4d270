-- Finished jobs leave the hot table, as on Postgres (where finished_jobs
-- is partitioned by day): `jobs` keeps only unfinished jobs, and every
-- write that ends a job moves its row here in the same transaction.
CREATE TABLE finished_jobs (
    id               TEXT    PRIMARY KEY NOT NULL,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    owner            TEXT,
    payload          TEXT    NOT NULL,
    schema_version   INTEGER NOT NULL DEFAULT 1,
    state            TEXT    NOT NULL CHECK (state IN ('succeeded', 'failed', 'cancelled')),
    stage            TEXT,
    progress         INTEGER NOT NULL DEFAULT 0,
    priority         INTEGER NOT NULL DEFAULT 0,
    fair_seq         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
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
    finished_at      INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
-- Retention deletes by age, in batches.
CREATE INDEX finished_jobs_finished ON finished_jobs (finished_at);
-- An owner's jobs, newest first (with `jobs_owner`, the API listing).
CREATE INDEX finished_jobs_owner ON finished_jobs (owner, id DESC) WHERE owner IS NOT NULL;

-- Idempotency keys, one row per keyed job, written in the enqueue
-- transaction and never moved (the same table as on Postgres, where no
-- unique index can span both job tables). A key goes when its job is pruned.
CREATE TABLE job_keys (
    owner           TEXT    NOT NULL DEFAULT '',
    kind            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    job_id          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (owner, kind, idempotency_key)
);
CREATE INDEX job_keys_job ON job_keys (job_id);

INSERT INTO job_keys (owner, kind, idempotency_key, job_id, created_at)
SELECT coalesce(owner, ''), kind, idempotency_key, id, created_at
FROM jobs WHERE idempotency_key IS NOT NULL;

INSERT INTO finished_jobs (id, kind, queue, owner, payload, schema_version, state, stage,
                           progress, priority, fair_seq, attempt, max_attempts, run_at,
                           lease_owner, lease_expires_at, token, rescues, cancel_requested,
                           result, errors, idempotency_key, created_at, started_at,
                           finished_at, updated_at)
SELECT id, kind, queue, owner, payload, schema_version, state, stage,
       progress, priority, fair_seq, attempt, max_attempts, run_at,
       lease_owner, lease_expires_at, token, rescues, cancel_requested,
       result, errors, idempotency_key, created_at, started_at,
       coalesce(finished_at, updated_at), updated_at
FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled');

DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled');

-- Served finished rows only; keys live in job_keys now.
DROP INDEX jobs_finished;
DROP INDEX jobs_idempotency;
