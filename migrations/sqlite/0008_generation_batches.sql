-- A batch of generations asked for in one request, as on Postgres.
CREATE TABLE generation_batches (
    id              TEXT    PRIMARY KEY NOT NULL,
    owner           TEXT    NOT NULL REFERENCES users (id),
    idempotency_key TEXT,
    request_hash    TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX generation_batches_idempotency ON generation_batches (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX generation_batches_owner ON generation_batches (owner);

ALTER TABLE generations ADD COLUMN batch_id TEXT REFERENCES generation_batches (id);
ALTER TABLE generations ADD COLUMN batch_position INTEGER;
CREATE INDEX generations_batch ON generations (batch_id, batch_position)
    WHERE batch_id IS NOT NULL;
