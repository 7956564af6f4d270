-- Credit purchases through a merchant of record.
--
-- An order is opened at checkout with the pack's credits fixed, and paid by
-- a signed notification from the merchant. The order keeps what a payment
-- record needs (amount, currency, time, the merchant's transaction id) and
-- nothing about the person: `user_id` is the only link to the account, and
-- it is cleared when the account is deleted, so the record outlives it.
CREATE TABLE payment_orders (
    id              uuid PRIMARY KEY,
    user_id         uuid REFERENCES users (id) ON DELETE SET NULL,
    provider        text        NOT NULL,
    pack            text        NOT NULL,
    credits         bigint      NOT NULL CHECK (credits > 0),
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid')),
    -- the merchant's id for the payment (Paddle `txn_…`)
    transaction_id  text,
    -- as paid, in the currency's minor unit
    amount          bigint,
    currency        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz
);
CREATE UNIQUE INDEX payment_orders_transaction ON payment_orders (provider, transaction_id)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX payment_orders_user ON payment_orders (user_id, created_at DESC)
    WHERE user_id IS NOT NULL;

-- Every notification applied, by the merchant's event id: a delivery seen
-- before changes nothing. Only the id and type are kept, never the body
-- (it carries the customer's details).
CREATE TABLE payment_events (
    provider    text        NOT NULL,
    event_id    text        NOT NULL,
    event_type  text        NOT NULL,
    order_id    uuid,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
