-- The access and audit log: sign-ups, verifications, logins, failed
-- logins, logouts, a token used from an address not seen before, and
-- (later) every data-subject and operator action, with the time, the
-- client's IP and user agent. `user_id` is NULL for a failed login to an
-- address with no account. Kept at least 180 days.
CREATE TABLE access_log (
    id          bigserial PRIMARY KEY,
    user_id     uuid REFERENCES users (id),
    event       text        NOT NULL,
    ip          text,
    user_agent  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- A user's entries, newest first (GET /v1/me/access-log).
CREATE INDEX access_log_user ON access_log (user_id, id DESC) WHERE user_id IS NOT NULL;
-- Retention by age.
CREATE INDEX access_log_created ON access_log (created_at);

-- The addresses each account was used from, to tell a new one.
CREATE TABLE account_ips (
    user_id     uuid        NOT NULL REFERENCES users (id),
    ip          text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, ip)
);
