-- Verification codes (P2): short-lived, single-use, attempt-limited, and
-- kept only as an HMAC-SHA256 under the server's code key (the code itself
-- is derived from `id` under that key when it is sent, never stored). A
-- user has at most one row: issuing a code deletes the earlier ones.
CREATE TABLE verification_codes (
    id          uuid PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id),
    code_hash   text        NOT NULL,
    tries       integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX verification_codes_user ON verification_codes (user_id);
