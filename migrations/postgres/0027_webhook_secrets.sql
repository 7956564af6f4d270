-- Each account's webhook signing secret (`POST /v1/me/webhook-secret`),
-- sealed like the addresses: kiln needs it in the clear only to sign.
ALTER TABLE users ADD COLUMN webhook_secret_sealed text;
