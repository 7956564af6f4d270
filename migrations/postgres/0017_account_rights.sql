-- Correcting an address: a code sent to confirm a new email or phone
-- carries it, and only verifying that code moves it into `users`. (The
-- restriction flag, `users.restricted_at`, has been there since 0002.)
ALTER TABLE verification_codes ADD COLUMN new_email text, ADD COLUMN new_phone text;
