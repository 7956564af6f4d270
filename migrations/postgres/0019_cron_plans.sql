-- The scheduler's record of each cron plan: the last slot it handled
-- (fired, or skipped while the plan's previous run was still going) and
-- the job it last enqueued. A replica decides about a slot under this
-- row's lock, so each slot fires once however many replicas run, a slot
-- never fires after a later one, and a plan never runs twice at once.
CREATE TABLE cron_plans (
    plan        text PRIMARY KEY,
    last_slot   timestamptz,
    last_job    uuid,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Retention of payment records goes by age.
CREATE INDEX payment_orders_created ON payment_orders (created_at);
CREATE INDEX payment_events_received ON payment_events (received_at);
-- The addresses accounts were used from go with the access log.
CREATE INDEX account_ips_first_seen ON account_ips (first_seen);
