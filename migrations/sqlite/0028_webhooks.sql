-- As on Postgres (see its 0028_webhooks.sql): registrations, delivery
-- attempts, and triggers that queue a `deliver_webhook` job in the
-- transaction that changes a watched job. Times are unix milliseconds.
CREATE TABLE webhooks (
    job_id     TEXT    PRIMARY KEY NOT NULL,
    owner      TEXT    NOT NULL,
    url        TEXT    NOT NULL,
    events     TEXT    NOT NULL CHECK (events IN ('completed', 'all')),
    created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_owner ON webhooks (owner);

CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status_code INTEGER,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed')),
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, id);

-- A random (version 4) UUID in SQL, once per registration row: the event's
-- id and its delivery job's id.
CREATE TRIGGER finished_jobs_webhook
AFTER INSERT ON finished_jobs
WHEN NEW.owner IS NOT NULL
BEGIN
    INSERT INTO jobs (id, kind, queue, payload, state, priority, max_attempts, run_at,
                      created_at, updated_at)
    SELECT e.id, 'deliver_webhook', 'webhooks',
           json_object('job_id', NEW.id, 'event_id', e.id, 'event', 'job.completed',
                       'state', NEW.state, 'stage', NEW.stage, 'progress', NEW.progress,
                       'occurred_at_ms', e.now),
           'available', 0, 24, e.now, e.now, e.now
    FROM webhooks w,
         (SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                       substr(hex(randomblob(2)), 2) || '-' ||
                       substr('89ab', 1 + (abs(random()) % 4), 1) ||
                       substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now) e
    WHERE w.job_id = NEW.id;
END;

CREATE TRIGGER jobs_webhook_changed
AFTER UPDATE OF state, stage ON jobs
WHEN NEW.owner IS NOT NULL
     AND (OLD.state IS NOT NEW.state OR OLD.stage IS NOT NEW.stage)
BEGIN
    INSERT INTO jobs (id, kind, queue, payload, state, priority, max_attempts, run_at,
                      created_at, updated_at)
    SELECT e.id, 'deliver_webhook', 'webhooks',
           json_object('job_id', NEW.id, 'event_id', e.id, 'event', 'job.changed',
                       'state', NEW.state, 'stage', NEW.stage, 'progress', NEW.progress,
                       'occurred_at_ms', e.now),
           'available', 0, 24, e.now, e.now, e.now
    FROM webhooks w,
         (SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                       substr(hex(randomblob(2)), 2) || '-' ||
                       substr('89ab', 1 + (abs(random()) % 4), 1) ||
                       substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now) e
    WHERE w.job_id = NEW.id AND w.events = 'all';
END;
