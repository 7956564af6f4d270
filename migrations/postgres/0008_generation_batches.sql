-- A batch of generations asked for in one request (`POST
-- /v1/generations/batch`): stored with all its jobs in one transaction,
-- under one idempotency key. A retry with the key finds the batch and
-- answers with the same jobs, in the request's order.
CREATE TABLE generation_batches (
    id              uuid PRIMARY KEY,
    owner           uuid        NOT NULL REFERENCES users (id),
    idempotency_key text,
    -- SHA-256 of the canonical batch: a retry must match it
    request_hash    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX generation_batches_idempotency ON generation_batches (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX generation_batches_owner ON generation_batches (owner);

ALTER TABLE generations
    ADD COLUMN batch_id uuid REFERENCES generation_batches (id),
    ADD COLUMN batch_position integer;
CREATE INDEX generations_batch ON generations (batch_id, batch_position)
    WHERE batch_id IS NOT NULL;
