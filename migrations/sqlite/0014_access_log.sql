-- The access and audit log, as on Postgres; times are unix milliseconds.
CREATE TABLE access_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT REFERENCES users (id),
    event       TEXT    NOT NULL,
    ip          TEXT,
    user_agent  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX access_log_user ON access_log (user_id, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX access_log_created ON access_log (created_at);

CREATE TABLE account_ips (
    user_id     TEXT    NOT NULL REFERENCES users (id),
    ip          TEXT    NOT NULL,
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (user_id, ip)
);
