-- The operator role, as on Postgres.
ALTER TABLE users ADD COLUMN operator INTEGER NOT NULL DEFAULT 0;
