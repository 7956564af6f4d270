-- Credits, as on Postgres (see its 0013_credits.sql for what each kind of
-- entry moves): an append-only ledger, its running sums per account, and
-- triggers that reserve at enqueue and settle once when a job ends. Times
-- are unix milliseconds.
CREATE TABLE credit_accounts (
    user_id     TEXT    PRIMARY KEY NOT NULL REFERENCES users (id),
    balance     INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO credit_accounts (user_id) SELECT id FROM users;

CREATE TRIGGER users_open_credit_account
AFTER INSERT ON users
BEGIN
    INSERT INTO credit_accounts (user_id, updated_at) VALUES (NEW.id, NEW.created_at);
END;

CREATE TABLE credit_entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL REFERENCES users (id),
    kind        TEXT    NOT NULL
                CHECK (kind IN ('grant', 'purchase', 'reserve', 'charge', 'refund')),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    reason      TEXT    NOT NULL,
    job_id      TEXT,
    order_id    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX credit_entries_user ON credit_entries (user_id, id DESC);
CREATE UNIQUE INDEX credit_entries_reservation ON credit_entries (job_id) WHERE kind = 'reserve';
CREATE UNIQUE INDEX credit_entries_settlement ON credit_entries (job_id)
    WHERE kind IN ('charge', 'refund');
CREATE UNIQUE INDEX credit_entries_order ON credit_entries (order_id, kind) WHERE order_id IS NOT NULL;
CREATE UNIQUE INDEX credit_entries_grant ON credit_entries (user_id, reason) WHERE kind = 'grant';

ALTER TABLE jobs ADD COLUMN credits INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0);
ALTER TABLE finished_jobs ADD COLUMN credits INTEGER NOT NULL DEFAULT 0;

-- One writer at a time: the check and the update cannot interleave with
-- another enqueue. RAISE undoes the inserting statement only.
CREATE TRIGGER jobs_reserve_credits
AFTER INSERT ON jobs
WHEN NEW.credits > 0 AND NEW.owner IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'kiln: insufficient credits')
    WHERE NOT EXISTS (SELECT 1 FROM credit_accounts
                      WHERE user_id = NEW.owner AND balance >= NEW.credits);
    UPDATE credit_accounts
    SET balance = balance - NEW.credits, reserved = reserved + NEW.credits,
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE user_id = NEW.owner;
    INSERT INTO credit_entries (user_id, kind, amount, reason, job_id, created_at)
    VALUES (NEW.owner, 'reserve', NEW.credits, NEW.kind, NEW.id,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- Settled once, when the job's row arrives in finished_jobs: the sums move
-- only while no settlement of the job exists yet.
CREATE TRIGGER finished_jobs_settle_credits
AFTER INSERT ON finished_jobs
WHEN NEW.credits > 0 AND NEW.owner IS NOT NULL
BEGIN
    UPDATE credit_accounts
    SET reserved = reserved - NEW.credits,
        balance = balance + CASE WHEN NEW.state = 'succeeded' THEN 0 ELSE NEW.credits END,
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE user_id = NEW.owner
      AND NOT EXISTS (SELECT 1 FROM credit_entries
                      WHERE job_id = NEW.id AND kind IN ('charge', 'refund'));
    INSERT OR IGNORE INTO credit_entries (user_id, kind, amount, reason, job_id, created_at)
    VALUES (NEW.owner, CASE WHEN NEW.state = 'succeeded' THEN 'charge' ELSE 'refund' END,
            NEW.credits, NEW.kind, NEW.id,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
