-- Verification codes, as on Postgres: only the keyed hash of a code, a
-- try count, expiry and use (unix milliseconds).
CREATE TABLE verification_codes (
    id          TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL REFERENCES users (id),
    code_hash   TEXT    NOT NULL,
    tries       INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX verification_codes_user ON verification_codes (user_id);
