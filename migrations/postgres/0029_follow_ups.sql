-- Follow-up jobs: a job may enqueue others in the transaction that records
-- its success (a generation's upscales), each naming it as its parent.
ALTER TABLE jobs ADD COLUMN parent_id uuid;
ALTER TABLE finished_jobs ADD COLUMN parent_id uuid;
-- The part of `credits` a job reserved for its follow-ups (0: none).
ALTER TABLE jobs ADD COLUMN follow_up_credits integer NOT NULL DEFAULT 0
    CHECK (follow_up_credits >= 0 AND follow_up_credits <= credits);
ALTER TABLE finished_jobs ADD COLUMN follow_up_credits integer NOT NULL DEFAULT 0;

-- A parent's children, in either table.
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX finished_jobs_parent ON finished_jobs (parent_id) WHERE parent_id IS NOT NULL;

-- A job that succeeds with follow-ups is charged its own part and hands
-- the follow-ups' part back (a refund entry, reason `follow_ups`) in the
-- same transaction that inserts the follow-ups, which reserve it again
-- each for itself. So a job may now have a charge and a refund: one of
-- each at most, whose sum is its reservation.
DROP INDEX credit_entries_settlement;
CREATE UNIQUE INDEX credit_entries_settlement ON credit_entries (job_id, kind)
    WHERE kind IN ('charge', 'refund');

CREATE OR REPLACE FUNCTION kiln_settle_credits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    own  integer := CASE WHEN NEW.state = 'succeeded'
                         THEN NEW.credits - NEW.follow_up_credits ELSE 0 END;
    back integer := CASE WHEN NEW.state = 'succeeded'
                         THEN NEW.follow_up_credits ELSE NEW.credits END;
BEGIN
    IF own > 0 THEN
        INSERT INTO credit_entries (user_id, kind, amount, reason, job_id)
        VALUES (NEW.owner::uuid, 'charge', own, NEW.kind, NEW.id)
        ON CONFLICT (job_id, kind) WHERE kind IN ('charge', 'refund') DO NOTHING;
        IF FOUND THEN
            UPDATE credit_accounts SET reserved = reserved - own, updated_at = now()
            WHERE user_id = NEW.owner::uuid;
        END IF;
    END IF;
    IF back > 0 THEN
        INSERT INTO credit_entries (user_id, kind, amount, reason, job_id)
        VALUES (NEW.owner::uuid, 'refund', back,
                CASE WHEN NEW.state = 'succeeded' THEN 'follow_ups' ELSE NEW.kind END, NEW.id)
        ON CONFLICT (job_id, kind) WHERE kind IN ('charge', 'refund') DO NOTHING;
        IF FOUND THEN
            UPDATE credit_accounts
            SET reserved = reserved - back, balance = balance + back, updated_at = now()
            WHERE user_id = NEW.owner::uuid;
        END IF;
    END IF;
    RETURN NULL;
END $$;
