-- The operators' admin API, as on Postgres.
ALTER TABLE queues ADD COLUMN concurrency_limit INTEGER CHECK (concurrency_limit > 0);
CREATE INDEX jobs_running_queue ON jobs (queue) WHERE state = 'running';
-- SQLite has no INCLUDE: the queue is the index's second column.
CREATE INDEX finished_jobs_failed ON finished_jobs (id DESC, queue) WHERE state = 'failed';
ALTER TABLE access_log ADD COLUMN detail TEXT;
