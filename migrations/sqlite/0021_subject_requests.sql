-- The register of data-subject requests, as on Postgres (see its
-- 0021_subject_requests.sql). Times are unix milliseconds.
CREATE TABLE subject_requests (
    id            TEXT    PRIMARY KEY NOT NULL,
    user_id       TEXT,
    kind          TEXT    NOT NULL
                  CHECK (kind IN ('access', 'export', 'correction', 'deletion', 'restriction')),
    job_id        TEXT,
    requested_at  INTEGER NOT NULL,
    due_at        INTEGER NOT NULL,
    completed_at  INTEGER
);
CREATE INDEX subject_requests_open ON subject_requests (due_at) WHERE completed_at IS NULL;
CREATE INDEX subject_requests_user ON subject_requests (user_id, kind) WHERE user_id IS NOT NULL;
CREATE INDEX subject_requests_completed ON subject_requests (completed_at);
