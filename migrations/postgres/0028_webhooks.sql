-- Completion webhooks. An enqueueing request may name a URL that hears of
-- its job; the registration is written with the job (same statement or
-- transaction) and keyed by it.
CREATE TABLE webhooks (
    job_id     uuid        PRIMARY KEY,
    -- the account whose secret signs the deliveries
    owner      text        NOT NULL,
    url        text        NOT NULL,
    -- 'completed': the terminal event only; 'all': every change of state
    -- or stage as well
    events     text        NOT NULL CHECK (events IN ('completed', 'all')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_owner ON webhooks (owner);

-- One row per delivery attempt, for `GET /v1/jobs/{id}/deliveries`.
CREATE TABLE webhook_deliveries (
    id          bigserial   PRIMARY KEY,
    -- the job the event is about (not the delivery job)
    job_id      uuid        NOT NULL,
    event_id    uuid        NOT NULL,
    event       text        NOT NULL,
    attempt     integer     NOT NULL,
    -- the receiver's answer; NULL when none came (connection fault, timeout)
    status_code integer,
    -- 'delivered', 'retrying' (another attempt follows) or 'failed'
    outcome     text        NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed')),
    -- why it did not succeed, as a code
    error       text,
    duration_ms integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id);

-- The events themselves are `deliver_webhook` jobs, queued by the database
-- in the transaction that makes the change, whichever path makes it
-- (a worker's completion, a cancel, an operator's discard, a rescue): an
-- event cannot be lost between the change and a later write. The event's
-- id is the delivery job's id, so every retry carries the same one. The
-- queue, priority and attempts are those of `DeliverWebhook` in the job
-- catalogue (a test holds them equal).
CREATE FUNCTION kiln_webhook_event(job_id uuid, event text, state text, stage text,
                                   progress smallint, wanted text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    event_id uuid;
BEGIN
    FOR event_id IN
        SELECT gen_random_uuid() FROM webhooks w
        WHERE w.job_id = kiln_webhook_event.job_id AND w.events = ANY (wanted)
    LOOP
        INSERT INTO jobs (id, kind, queue, payload, state, priority, max_attempts, run_at)
        VALUES (event_id, 'deliver_webhook', 'webhooks',
                jsonb_build_object('job_id', job_id, 'event_id', event_id, 'event', event,
                                   'state', state, 'stage', stage, 'progress', progress,
                                   'occurred_at_ms',
                                   (extract(epoch FROM clock_timestamp()) * 1000)::bigint),
                'available', 0, 24, now());
    END LOOP;
END $$;

CREATE FUNCTION kiln_webhook_completed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM kiln_webhook_event(NEW.id, 'job.completed', NEW.state, NEW.stage, NEW.progress,
                               ARRAY['completed', 'all']);
    RETURN NULL;
END $$;

CREATE TRIGGER finished_jobs_webhook
    AFTER INSERT ON finished_jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION kiln_webhook_completed();

CREATE FUNCTION kiln_webhook_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM kiln_webhook_event(NEW.id, 'job.changed', NEW.state, NEW.stage, NEW.progress,
                               ARRAY['all']);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_webhook_changed
    AFTER UPDATE OF state, stage ON jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL
                       AND (OLD.state IS DISTINCT FROM NEW.state
                            OR OLD.stage IS DISTINCT FROM NEW.stage))
    EXECUTE FUNCTION kiln_webhook_changed();
