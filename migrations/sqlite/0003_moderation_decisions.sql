-- Every moderation decision, allowed or not (P7), kept for the policy's
-- 180 days (P13) by the retention purge. No foreign keys: a decision
-- outlives the generation and account it was about until its own purge.
CREATE TABLE moderation_decisions (
    id             TEXT    PRIMARY KEY NOT NULL,
    owner          TEXT    NOT NULL,
    generation_id  TEXT,
    subject        TEXT    NOT NULL CHECK (subject IN ('prompt', 'image')),
    provider       TEXT    NOT NULL,
    allowed        INTEGER NOT NULL,
    categories     TEXT    NOT NULL,
    scores         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX moderation_decisions_created ON moderation_decisions (created_at);
CREATE INDEX moderation_decisions_generation ON moderation_decisions (generation_id);
CREATE INDEX moderation_decisions_owner ON moderation_decisions (owner, id);
