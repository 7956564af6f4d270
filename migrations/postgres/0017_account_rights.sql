-- Correcting an address: a code sent to confirm a new email or phone
-- carries it (its blind index and its sealed text, as `users` keeps them:
-- see 0018), and only verifying that code moves it into `users`. (The
-- restriction flag, `users.restricted_at`, has been there since 0002.)
ALTER TABLE verification_codes
    ADD COLUMN new_email_index text,
    ADD COLUMN new_phone_index text,
    ADD COLUMN new_contact_sealed text;
