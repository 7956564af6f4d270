-- Credits: an append-only ledger and, per account, its running sums.
--
-- Every entry has a positive `amount`; its kind says where it moves it:
--   grant, purchase  add to `balance`
--   reserve          moves from `balance` to `reserved` (at enqueue)
--   charge           removes from `reserved` (the job succeeded)
--   refund           moves from `reserved` back to `balance` (it did not)
-- so `balance` = grants + purchases + refunds - reserves and `reserved` =
-- reserves - charges - refunds, always: the triggers below write each
-- entry and its sums in the same statement. Neither can go below zero.
CREATE TABLE credit_accounts (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    balance     bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO credit_accounts (user_id) SELECT id FROM users;

-- Every account has its row from the start, whichever write made it.
CREATE FUNCTION kiln_open_credit_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credit_accounts (user_id) VALUES (NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER users_open_credit_account
    AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION kiln_open_credit_account();

CREATE TABLE credit_entries (
    id          bigserial PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id),
    kind        text        NOT NULL
                CHECK (kind IN ('grant', 'purchase', 'reserve', 'charge', 'refund')),
    amount      bigint      NOT NULL CHECK (amount > 0),
    -- why: `signup`, `referral`, `referral:<referred user>`, a job's kind
    reason      text        NOT NULL,
    job_id      uuid,
    order_id    uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- An account's entries, newest first (GET /v1/credits).
CREATE INDEX credit_entries_user ON credit_entries (user_id, id DESC);
-- Exactly once: one reservation per job, and one settlement (a charge or a
-- refund, never both).
CREATE UNIQUE INDEX credit_entries_reservation ON credit_entries (job_id) WHERE kind = 'reserve';
CREATE UNIQUE INDEX credit_entries_settlement ON credit_entries (job_id)
    WHERE kind IN ('charge', 'refund');
-- One purchase per order; a grant once per reason.
CREATE UNIQUE INDEX credit_entries_order ON credit_entries (order_id, kind) WHERE order_id IS NOT NULL;
CREATE UNIQUE INDEX credit_entries_grant ON credit_entries (user_id, reason) WHERE kind = 'grant';

-- The credits a job reserved when it was enqueued (0: free).
ALTER TABLE jobs ADD COLUMN credits integer NOT NULL DEFAULT 0 CHECK (credits >= 0);
ALTER TABLE finished_jobs ADD COLUMN credits integer NOT NULL DEFAULT 0;

-- Jobs that cost credits reserve them as they go in, or do not go in: the
-- row lock on each account orders concurrent enqueues, and each one
-- re-reads the balance after the one before it. Once per statement, not
-- per row: a batch of 100 generations updates its account once.
CREATE FUNCTION kiln_reserve_credits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owners integer;
    reserved integer;
BEGIN
    WITH wanted AS (
             SELECT owner::uuid AS user_id, sum(credits) AS total FROM new_jobs
             WHERE credits > 0 AND owner IS NOT NULL GROUP BY owner),
         taken AS (
             UPDATE credit_accounts a
             SET balance = a.balance - w.total, reserved = a.reserved + w.total,
                 updated_at = now()
             FROM wanted w WHERE a.user_id = w.user_id AND a.balance >= w.total
             RETURNING 1)
    SELECT (SELECT count(*) FROM wanted), (SELECT count(*) FROM taken) INTO owners, reserved;
    IF reserved < owners THEN
        RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'KC402';
    END IF;
    IF owners > 0 THEN
        INSERT INTO credit_entries (user_id, kind, amount, reason, job_id)
        SELECT owner::uuid, 'reserve', credits, kind, id FROM new_jobs
        WHERE credits > 0 AND owner IS NOT NULL;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_reserve_credits
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_reserve_credits();

-- A job that ends settles its reservation once, whichever write ended it
-- (success, failure, cancellation, rescue, an operator): charged when it
-- succeeded, refunded otherwise. A row that enters a partition again
-- (`kiln_ensure_finished_partitions`) finds its settlement done.
CREATE FUNCTION kiln_settle_credits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    settled text := CASE WHEN NEW.state = 'succeeded' THEN 'charge' ELSE 'refund' END;
BEGIN
    INSERT INTO credit_entries (user_id, kind, amount, reason, job_id)
    VALUES (NEW.owner::uuid, settled, NEW.credits, NEW.kind, NEW.id)
    ON CONFLICT (job_id) WHERE kind IN ('charge', 'refund') DO NOTHING;
    IF FOUND THEN
        UPDATE credit_accounts
        SET reserved = reserved - NEW.credits,
            balance = balance + CASE WHEN settled = 'refund' THEN NEW.credits ELSE 0 END,
            updated_at = now()
        WHERE user_id = NEW.owner::uuid;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER finished_jobs_settle_credits
    AFTER INSERT ON finished_jobs
    FOR EACH ROW WHEN (NEW.credits > 0 AND NEW.owner IS NOT NULL)
    EXECUTE FUNCTION kiln_settle_credits();
