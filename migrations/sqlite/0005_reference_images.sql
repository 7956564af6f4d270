-- The reference image URLs a client gave (P4). They are fetched once by
-- the guarded fetcher and re-hosted under refs/<generation id>/.
ALTER TABLE generations ADD COLUMN reference_urls TEXT NOT NULL DEFAULT '[]';
