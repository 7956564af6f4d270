-- The operators' scheduled exports: a month of payment records (CSV) and
-- a day of the access log (gzip JSON lines), one file per period, kept as
-- long as the records they hold (`expires_at`).
CREATE TABLE operator_exports (
    id            uuid        PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('accounting', 'access_log')),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    object_key    text        NOT NULL,
    rows          bigint      NOT NULL,
    bytes         bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    job_id        uuid,
    UNIQUE (kind, period_start)
);
CREATE INDEX operator_exports_expires ON operator_exports (expires_at);

-- The accounting export reads a month of payments by when they were paid.
CREATE INDEX payment_orders_paid ON payment_orders (paid_at) WHERE paid_at IS NOT NULL;

-- A request answered by its job (an export, also when its owner cancels
-- it) is found by the job's id.
CREATE INDEX subject_requests_job ON subject_requests (job_id) WHERE job_id IS NOT NULL;
