-- Every moderation decision, allowed or not (P7), kept for the policy's
-- 180 days (P13) by the retention purge. No foreign keys: a decision
-- outlives the generation and account it was about until its own purge.
CREATE TABLE moderation_decisions (
    id             uuid        PRIMARY KEY,
    owner          uuid        NOT NULL,
    generation_id  uuid,
    subject        text        NOT NULL CHECK (subject IN ('prompt', 'image')),
    provider       text        NOT NULL,
    allowed        boolean     NOT NULL,
    categories     jsonb       NOT NULL,
    scores         jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX moderation_decisions_created ON moderation_decisions (created_at);
CREATE INDEX moderation_decisions_generation ON moderation_decisions (generation_id);
CREATE INDEX moderation_decisions_owner ON moderation_decisions (owner, id);
