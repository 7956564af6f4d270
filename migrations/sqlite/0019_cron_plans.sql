-- The scheduler's record of each cron plan, as on Postgres (see its
-- 0019_cron_plans.sql). Times are unix milliseconds.
CREATE TABLE cron_plans (
    plan        TEXT    PRIMARY KEY NOT NULL,
    last_slot   INTEGER,
    last_job    TEXT,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX payment_orders_created ON payment_orders (created_at);
CREATE INDEX payment_events_received ON payment_events (received_at);
CREATE INDEX account_ips_first_seen ON account_ips (first_seen);
