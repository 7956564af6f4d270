-- Notices in the account's language, policy versions, security notices
-- and the fan-out's recipients, as on Postgres (see its 0023_notices.sql).
-- Times are unix milliseconds.
ALTER TABLE users ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'
    CHECK (locale IN ('en', 'zh-Hans', 'zh-Hant'));
ALTER TABLE users ADD COLUMN policy_acked TEXT;

CREATE TABLE policy_versions (
    version       TEXT    PRIMARY KEY NOT NULL,
    effective_at  INTEGER NOT NULL,
    summary       TEXT    NOT NULL,
    published_at  INTEGER NOT NULL
);
CREATE INDEX policy_versions_published ON policy_versions (published_at);
CREATE INDEX policy_versions_effective ON policy_versions (effective_at);

CREATE TABLE security_notices (
    id          TEXT    PRIMARY KEY NOT NULL,
    subject     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    everyone    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    job_id      TEXT
);

CREATE TABLE notice_audience (
    notice   TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (notice, user_id)
);
CREATE INDEX notice_audience_user ON notice_audience (user_id);

CREATE TABLE notice_recipients (
    notice     TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    queued_at  INTEGER NOT NULL,
    PRIMARY KEY (notice, user_id)
);
CREATE INDEX notice_recipients_user ON notice_recipients (user_id);
