-- The operator role: what the admin API asks for. Granted and revoked only
-- from the command line (`kiln user grant-operator`), each change written
-- to the access log.
ALTER TABLE users ADD COLUMN operator boolean NOT NULL DEFAULT false;
