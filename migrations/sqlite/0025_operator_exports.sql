-- The operators' scheduled exports, as on Postgres (see its
-- 0025_operator_exports.sql). Times are unix milliseconds.
CREATE TABLE operator_exports (
    id            TEXT    PRIMARY KEY NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('accounting', 'access_log')),
    period_start  INTEGER NOT NULL,
    period_end    INTEGER NOT NULL,
    object_key    TEXT    NOT NULL,
    rows          INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    job_id        TEXT,
    UNIQUE (kind, period_start)
);
CREATE INDEX operator_exports_expires ON operator_exports (expires_at);

CREATE INDEX payment_orders_paid ON payment_orders (paid_at) WHERE paid_at IS NOT NULL;

-- A request answered by its job (an export, also when its owner cancels
-- it) is found by the job's id.
CREATE INDEX subject_requests_job ON subject_requests (job_id) WHERE job_id IS NOT NULL;
