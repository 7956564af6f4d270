-- The one table that is the truth for clients, workers and operators.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    -- the account the job works for; NULL for system jobs
    owner            text,
    payload          jsonb       NOT NULL,
    schema_version   integer     NOT NULL DEFAULT 1,
    state            text        NOT NULL CHECK (state IN
                       ('scheduled','available','running','retryable','succeeded','failed','cancelled')),
    stage            text,
    progress         smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    -- higher runs first
    priority         smallint    NOT NULL DEFAULT 0,
    -- per-owner position among that owner's unfinished jobs, set at enqueue:
    -- claiming in (priority, fair_seq) order round-robins between owners
    fair_seq         bigint      NOT NULL DEFAULT 0,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL,
    lease_owner      text,
    lease_expires_at timestamptz,
    -- fencing token: bumped by every claim; outcome writes must present it
    token            bigint      NOT NULL DEFAULT 0,
    -- times a worker lost this job (lease expired); capped to stop crash loops
    rescues          integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    result           jsonb,
    -- one entry per failed attempt: {attempt, at, code, message, permanent}
    errors           jsonb       NOT NULL DEFAULT '[]',
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Claims: the next jobs of a queue in claim order, pending states only.
CREATE INDEX jobs_claim ON jobs (queue, priority DESC, fair_seq, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- Rescue of expired leases.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Retention of finished jobs.
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
-- An owner's jobs, newest first (API listing), and the owner's unfinished count.
CREATE INDEX jobs_owner ON jobs (owner, id DESC);
CREATE INDEX jobs_owner_pending ON jobs (owner)
    WHERE state IN ('available', 'scheduled', 'retryable', 'running');
-- Idempotency keys are unique per owner and kind.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(owner, ''), kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE queues (
    name       text PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Wake idle workers as soon as a job becomes available. Notifications with
-- the same payload in one transaction are folded into one by Postgres.
CREATE FUNCTION kiln_notify_available() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_jobs_available', NEW.queue);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_available
    AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'available')
    EXECUTE FUNCTION kiln_notify_available();

-- Tell the worker holding a job that its cancellation was asked for.
CREATE FUNCTION kiln_notify_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_jobs_cancel', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_cancel
    AFTER UPDATE OF cancel_requested ON jobs
    FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested)
    EXECUTE FUNCTION kiln_notify_cancel();
