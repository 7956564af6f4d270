-- As on Postgres (see its 0029_follow_ups.sql): parents, the credits a job
-- reserved for its follow-ups, and a settlement that charges a succeeded
-- job its own part and hands the follow-ups' part back.
ALTER TABLE jobs ADD COLUMN parent_id TEXT;
ALTER TABLE finished_jobs ADD COLUMN parent_id TEXT;
ALTER TABLE jobs ADD COLUMN follow_up_credits INTEGER NOT NULL DEFAULT 0
    CHECK (follow_up_credits >= 0);
ALTER TABLE finished_jobs ADD COLUMN follow_up_credits INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX finished_jobs_parent ON finished_jobs (parent_id) WHERE parent_id IS NOT NULL;

DROP INDEX credit_entries_settlement;
CREATE UNIQUE INDEX credit_entries_settlement ON credit_entries (job_id, kind)
    WHERE kind IN ('charge', 'refund');

DROP TRIGGER finished_jobs_settle_credits;

-- Each part moves the sums only while its entry does not exist yet.
CREATE TRIGGER finished_jobs_settle_credits
AFTER INSERT ON finished_jobs
WHEN NEW.credits > 0 AND NEW.owner IS NOT NULL
BEGIN
    -- Charged: a succeeded job's own part.
    UPDATE credit_accounts
    SET reserved = reserved - (NEW.credits - NEW.follow_up_credits),
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE user_id = NEW.owner AND NEW.state = 'succeeded'
      AND NEW.credits - NEW.follow_up_credits > 0
      AND NOT EXISTS (SELECT 1 FROM credit_entries WHERE job_id = NEW.id AND kind = 'charge');
    INSERT OR IGNORE INTO credit_entries (user_id, kind, amount, reason, job_id, created_at)
    SELECT NEW.owner, 'charge', NEW.credits - NEW.follow_up_credits, NEW.kind, NEW.id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NEW.state = 'succeeded' AND NEW.credits - NEW.follow_up_credits > 0;
    -- Refunded: everything of a job that did not succeed; the follow-ups'
    -- part of one that did.
    UPDATE credit_accounts
    SET reserved = reserved - CASE WHEN NEW.state = 'succeeded'
                                   THEN NEW.follow_up_credits ELSE NEW.credits END,
        balance = balance + CASE WHEN NEW.state = 'succeeded'
                                 THEN NEW.follow_up_credits ELSE NEW.credits END,
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE user_id = NEW.owner
      AND (NEW.state <> 'succeeded' OR NEW.follow_up_credits > 0)
      AND NOT EXISTS (SELECT 1 FROM credit_entries WHERE job_id = NEW.id AND kind = 'refund');
    INSERT OR IGNORE INTO credit_entries (user_id, kind, amount, reason, job_id, created_at)
    SELECT NEW.owner, 'refund',
           CASE WHEN NEW.state = 'succeeded' THEN NEW.follow_up_credits ELSE NEW.credits END,
           CASE WHEN NEW.state = 'succeeded' THEN 'follow_ups' ELSE NEW.kind END, NEW.id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NEW.state <> 'succeeded' OR NEW.follow_up_credits > 0;
END;
