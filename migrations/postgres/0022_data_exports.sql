-- One unfinished data export per account. `jobs` holds only unfinished
-- jobs (a job leaves for `finished_jobs` in the statement that ends it),
-- so this index is exactly "one export running or waiting per owner": a
-- second enqueue fails in the database, however the requests race, and
-- its idempotency key goes back with it (the same statement).
CREATE UNIQUE INDEX jobs_one_data_export ON jobs (owner) WHERE kind = 'data_export';
