-- Correcting an address, as on Postgres (see its 0017_account_rights.sql).
ALTER TABLE verification_codes ADD COLUMN new_email_index TEXT;
ALTER TABLE verification_codes ADD COLUMN new_phone_index TEXT;
ALTER TABLE verification_codes ADD COLUMN new_contact_sealed TEXT;
