-- One unfinished data export per account (see Postgres' 0022): `jobs`
-- holds only unfinished jobs, so the index refuses a second one.
CREATE UNIQUE INDEX jobs_one_data_export ON jobs (owner) WHERE kind = 'data_export';
