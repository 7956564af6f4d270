-- As on Postgres (see its 0027_webhook_secrets.sql).
ALTER TABLE users ADD COLUMN webhook_secret_sealed TEXT;
