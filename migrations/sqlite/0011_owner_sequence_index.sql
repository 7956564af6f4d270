-- A new job's place in its owner's round-robin is one past the owner's
-- highest `fair_seq` among its unfinished jobs: the top of this index, read
-- in one probe. It used to be a count of those jobs, which read every one
-- of them: with 20,000 queued for one account, each enqueue counted 20,000
-- index entries. `jobs` holds only unfinished jobs (0009), so no state
-- predicate is needed.
DROP INDEX jobs_owner_pending;
CREATE INDEX jobs_owner_seq ON jobs (owner, fair_seq) WHERE owner IS NOT NULL;
