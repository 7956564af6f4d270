-- Accounts: email or phone, bcrypt hash, birth date (P1, P17), referral code (P3).
-- Verification, throttling and credits come later; the columns they need
-- (verified_at, restricted_at, deleted_at) are here already.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text UNIQUE,
    phone          text UNIQUE,
    password_hash  text        NOT NULL,
    birth_date     date        NOT NULL,
    referral_code  text        NOT NULL UNIQUE,
    referred_by    uuid REFERENCES users (id),
    verified_at    timestamptz,
    restricted_at  timestamptz,
    deleted_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (email IS NOT NULL OR phone IS NOT NULL)
);

-- Bearer tokens, stored only as SHA-256 hashes.
CREATE TABLE sessions (
    token_hash  text PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

-- A generation request and its job, inserted in one transaction (P4).
CREATE TABLE generations (
    id                  uuid PRIMARY KEY,
    job_id              uuid        NOT NULL UNIQUE,
    owner               uuid        NOT NULL REFERENCES users (id),
    prompt              text        NOT NULL,
    model               text        NOT NULL,
    width               integer     NOT NULL,
    height              integer     NOT NULL,
    n                   integer     NOT NULL,
    -- SHA-256 of the canonical request: an idempotent retry must match it
    request_hash        text        NOT NULL,
    provider            text,
    provider_latency_ms integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE INDEX generations_owner ON generations (owner, id DESC);

-- Generated images: bytes in private object storage, served by signed URL (P9).
CREATE TABLE images (
    id             uuid PRIMARY KEY,
    generation_id  uuid        NOT NULL REFERENCES generations (id),
    owner          uuid        NOT NULL REFERENCES users (id),
    object_key     text        NOT NULL,
    width          integer     NOT NULL,
    height         integer     NOT NULL,
    content_type   text        NOT NULL,
    bytes          bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);
CREATE INDEX images_owner ON images (owner, id DESC);
CREATE INDEX images_generation ON images (generation_id);

-- Long-polling clients wait for their job to change. Only jobs that belong
-- to someone notify: system and benchmark jobs stay off this channel.
CREATE FUNCTION kiln_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_job_changed', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_changed
    AFTER UPDATE OF state, stage, progress ON jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION kiln_notify_changed();
