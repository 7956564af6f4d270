-- Same tables as on Postgres; ids are text UUIDs, times unix milliseconds,
-- dates ISO text.
CREATE TABLE users (
    id             TEXT    PRIMARY KEY NOT NULL,
    email          TEXT UNIQUE,
    phone          TEXT UNIQUE,
    password_hash  TEXT    NOT NULL,
    birth_date     TEXT    NOT NULL,
    referral_code  TEXT    NOT NULL UNIQUE,
    referred_by    TEXT REFERENCES users (id),
    verified_at    INTEGER,
    restricted_at  INTEGER,
    deleted_at     INTEGER,
    created_at     INTEGER NOT NULL,
    CHECK (email IS NOT NULL OR phone IS NOT NULL)
);

CREATE TABLE sessions (
    token_hash  TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL REFERENCES users (id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE generations (
    id                  TEXT    PRIMARY KEY NOT NULL,
    job_id              TEXT    NOT NULL UNIQUE,
    owner               TEXT    NOT NULL REFERENCES users (id),
    prompt              TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    width               INTEGER NOT NULL,
    height              INTEGER NOT NULL,
    n                   INTEGER NOT NULL,
    request_hash        TEXT    NOT NULL,
    provider            TEXT,
    provider_latency_ms INTEGER,
    created_at          INTEGER NOT NULL,
    finished_at         INTEGER
);
CREATE INDEX generations_owner ON generations (owner, id DESC);

CREATE TABLE images (
    id             TEXT    PRIMARY KEY NOT NULL,
    generation_id  TEXT    NOT NULL REFERENCES generations (id),
    owner          TEXT    NOT NULL REFERENCES users (id),
    object_key     TEXT    NOT NULL,
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    content_type   TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    deleted_at     INTEGER
);
CREATE INDEX images_owner ON images (owner, id DESC);
CREATE INDEX images_generation ON images (generation_id);
