-- Correcting an address, as on Postgres (see its 0017_account_rights.sql).
ALTER TABLE verification_codes ADD COLUMN new_email TEXT;
ALTER TABLE verification_codes ADD COLUMN new_phone TEXT;
