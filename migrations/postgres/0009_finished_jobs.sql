-- Finished jobs leave the hot table. `jobs` keeps only unfinished jobs
-- (claims, rescues and heartbeats never see history); every write that
-- ends a job moves its row here in the same statement. One partition per
-- UTC day, so retention drops whole days instead of deleting rows; the
-- DEFAULT partition takes any row whose day has no partition yet, so a
-- write never fails for want of one.
CREATE TABLE finished_jobs (
    id               uuid        NOT NULL,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    owner            text,
    payload          jsonb       NOT NULL,
    schema_version   integer     NOT NULL DEFAULT 1,
    state            text        NOT NULL CHECK (state IN ('succeeded', 'failed', 'cancelled')),
    stage            text,
    progress         smallint    NOT NULL DEFAULT 0,
    priority         smallint    NOT NULL DEFAULT 0,
    fair_seq         bigint      NOT NULL DEFAULT 0,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    run_at           timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    token            bigint      NOT NULL DEFAULT 0,
    rescues          integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    result           jsonb,
    errors           jsonb       NOT NULL DEFAULT '[]',
    idempotency_key  text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    -- a partitioned table's keys must hold the partition key; reads by id
    -- use it as an index on id
    PRIMARY KEY (id, finished_at)
) PARTITION BY RANGE (finished_at);

CREATE TABLE finished_jobs_default PARTITION OF finished_jobs DEFAULT;
-- An owner's jobs, newest first (with `jobs_owner`, the API listing).
CREATE INDEX finished_jobs_owner ON finished_jobs (owner, id DESC) WHERE owner IS NOT NULL;
-- Retention's row deletes (the DEFAULT partition, and a cutoff inside a day).
CREATE INDEX finished_jobs_finished ON finished_jobs (finished_at);

-- A job that finishes is a change its long-polling owner waits for: the
-- row leaves `jobs` by DELETE, so `jobs_notify_changed` does not see it.
CREATE TRIGGER finished_jobs_notify_changed
    AFTER INSERT ON finished_jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION kiln_notify_changed();

-- Creates the day partitions from `first` to `first + days` (UTC) that are
-- missing. Rows the DEFAULT partition holds for such a day move into it
-- (a partition cannot be created over them). Idempotent; every worker's
-- maintenance loop calls it.
CREATE FUNCTION kiln_ensure_finished_partitions(first date, days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    name    text;
    lo      timestamptz;
    hi      timestamptz;
    created integer := 0;
BEGIN
    FOR i IN 0..days LOOP
        day := first + i;
        name := 'finished_jobs_p' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        -- Another process may be creating it (or retention dropping it).
        PERFORM pg_advisory_xact_lock(hashtext('kiln_finished_partitions'));
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE finished_jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXECUTE format(
            'WITH moved AS (DELETE FROM finished_jobs_default
                            WHERE finished_at >= %L AND finished_at < %L RETURNING *)
             INSERT INTO %I SELECT * FROM moved', lo, hi, name);
        EXECUTE format('ALTER TABLE finished_jobs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       name, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

-- Idempotency keys, one row per keyed job, written in the enqueue
-- transaction and never moved: a unique index cannot span `jobs` and a
-- partitioned `finished_jobs`, and checking both races with a job moving
-- between them. A key goes when its job is pruned.
CREATE TABLE job_keys (
    owner           text        NOT NULL DEFAULT '',
    kind            text        NOT NULL,
    idempotency_key text        NOT NULL,
    job_id          uuid        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, kind, idempotency_key)
);
-- Retention deletes the keys of the jobs it removes.
CREATE INDEX job_keys_job ON job_keys (job_id);

-- Move what exists forward. Today's partitions first; older days go to
-- the DEFAULT partition and leave it by row deletes as they age out.
SELECT kiln_ensure_finished_partitions((now() AT TIME ZONE 'UTC')::date, 3);

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
