-- Addresses at rest (store/src/pii.rs): `email` and `phone` become blind
-- indexes (an HMAC of the address, unique, for lookups), and the addresses
-- themselves are kept sealed (AES-256-GCM, `<key id>:<hex>`) in
-- `email_sealed` and `phone_sealed`. Rows written before this keep their
-- plain address in the index column with both sealed columns NULL until
-- kiln reseals them as it starts.
ALTER TABLE users RENAME COLUMN email TO email_index;
ALTER TABLE users RENAME COLUMN phone TO phone_index;
ALTER TABLE users ADD COLUMN email_sealed text, ADD COLUMN phone_sealed text;

-- A digest of the index key every process must share: a process with
-- other keys refuses to start rather than seal what others cannot find.
CREATE TABLE pii_keys (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint text NOT NULL
);
