-- Addresses at rest, as on Postgres (see its 0018_sealed_contacts.sql).
ALTER TABLE users RENAME COLUMN email TO email_index;
ALTER TABLE users RENAME COLUMN phone TO phone_index;
ALTER TABLE users ADD COLUMN email_sealed TEXT;
ALTER TABLE users ADD COLUMN phone_sealed TEXT;

CREATE TABLE pii_keys (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    fingerprint TEXT NOT NULL
);
