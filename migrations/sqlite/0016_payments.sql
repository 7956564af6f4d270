-- Credit purchases, as on Postgres (see its 0016_payments.sql): orders
-- detached from the person on deletion, and every notification's id
-- applied once. Times are unix milliseconds.
CREATE TABLE payment_orders (
    id              TEXT    PRIMARY KEY NOT NULL,
    user_id         TEXT REFERENCES users (id) ON DELETE SET NULL,
    provider        TEXT    NOT NULL,
    pack            TEXT    NOT NULL,
    credits         INTEGER NOT NULL CHECK (credits > 0),
    status          TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid')),
    transaction_id  TEXT,
    amount          INTEGER,
    currency        TEXT,
    created_at      INTEGER NOT NULL,
    paid_at         INTEGER
);
CREATE UNIQUE INDEX payment_orders_transaction ON payment_orders (provider, transaction_id)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX payment_orders_user ON payment_orders (user_id, created_at DESC)
    WHERE user_id IS NOT NULL;

CREATE TABLE payment_events (
    provider    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    order_id    TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (provider, event_id)
);
