-- The worker registry, as on Postgres (see its 0026_workers.sql). Times
-- are unix milliseconds; `queues` is a JSON array of names.
CREATE TABLE workers (
    id               TEXT    PRIMARY KEY NOT NULL,
    host             TEXT    NOT NULL,
    pid              INTEGER NOT NULL,
    version          TEXT    NOT NULL,
    queues           TEXT    NOT NULL,
    concurrency      INTEGER NOT NULL,
    started_at       INTEGER NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    running          INTEGER NOT NULL DEFAULT 0,
    last_claim_at    INTEGER,
    stopping         INTEGER NOT NULL DEFAULT 0,
    lost_after_ms    INTEGER NOT NULL,
    stalled_after_ms INTEGER NOT NULL
);
