-- The register of data-subject requests (access, export, correction,
-- deletion, restriction): when each was made, when it is due (the policy
-- answers within 30 days) and when it was answered. An erased account's
-- requests stay, answered and detached from it (`user_id` NULL).
CREATE TABLE subject_requests (
    id            uuid PRIMARY KEY,
    user_id       uuid,
    kind          text        NOT NULL
                  CHECK (kind IN ('access', 'export', 'correction', 'deletion', 'restriction')),
    job_id        uuid,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    due_at        timestamptz NOT NULL,
    completed_at  timestamptz
);
-- Open requests by due date: the overdue gauge and list read only these.
CREATE INDEX subject_requests_open ON subject_requests (due_at) WHERE completed_at IS NULL;
CREATE INDEX subject_requests_user ON subject_requests (user_id, kind) WHERE user_id IS NOT NULL;
-- Retention of answered requests, with the access log.
CREATE INDEX subject_requests_completed ON subject_requests (completed_at);
