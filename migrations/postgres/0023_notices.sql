-- Notices go out in the account's language (`en`, `zh-Hans`, `zh-Hant`).
ALTER TABLE users ADD COLUMN locale text NOT NULL DEFAULT 'en'
    CHECK (locale IN ('en', 'zh-Hans', 'zh-Hant'));
-- The policy version its owner acknowledged last (POST /v1/me/policy-ack).
ALTER TABLE users ADD COLUMN policy_acked text;

-- Policy versions as published, each announced at least 7 days before it
-- takes effect; `summary` is JSON text: {"en", "zh-Hans"?, "zh-Hant"?}.
CREATE TABLE policy_versions (
    version       text        PRIMARY KEY,
    effective_at  timestamptz NOT NULL,
    summary       text        NOT NULL,
    published_at  timestamptz NOT NULL
);
CREATE INDEX policy_versions_published ON policy_versions (published_at);
CREATE INDEX policy_versions_effective ON policy_versions (effective_at);

-- Security (breach) notices, with when they were sent out: the record of
-- the 72-hour promise. `subject` and `body` are JSON text like a policy
-- summary; `everyone`: to every verified account, else to its audience.
CREATE TABLE security_notices (
    id          uuid        PRIMARY KEY,
    subject     text        NOT NULL,
    body        text        NOT NULL,
    everyone    boolean     NOT NULL,
    created_at  timestamptz NOT NULL,
    job_id      uuid
);

-- The accounts a notice names, when it names them (`security:<id>`).
CREATE TABLE notice_audience (
    notice   text NOT NULL,
    user_id  uuid NOT NULL,
    PRIMARY KEY (notice, user_id)
);
CREATE INDEX notice_audience_user ON notice_audience (user_id);

-- Whom a fan-out queued a notice for, and when: written in the
-- transaction that queues the notice, so nobody is notified twice.
CREATE TABLE notice_recipients (
    notice     text        NOT NULL,
    user_id    uuid        NOT NULL,
    queued_at  timestamptz NOT NULL,
    PRIMARY KEY (notice, user_id)
);
CREATE INDEX notice_recipients_user ON notice_recipients (user_id);
