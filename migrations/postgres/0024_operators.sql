-- The operators' admin API (issue 12).
--
-- A queue's concurrency limit: at most this many of its jobs run at once,
-- across every worker process. NULL: no limit. Read by the claim path
-- (the table has one row per queue an operator touched).
ALTER TABLE queues ADD COLUMN concurrency_limit integer CHECK (concurrency_limit > 0);

-- How many of a queue's jobs run now, for a capped claim: the running rows
-- only, so it stays small however long the backlog is.
CREATE INDEX jobs_running_queue ON jobs (queue) WHERE state = 'running';

-- Dead jobs, newest first, with their queue: the operators' list of
-- failed jobs pages through it and the overview counts it by queue (an
-- index-only scan), without reading the succeeded history that is most of
-- `finished_jobs`.
CREATE INDEX finished_jobs_failed ON finished_jobs (id DESC) INCLUDE (queue) WHERE state = 'failed';

-- What an operator's action touched (job id, queue, filter, counts):
-- never a payload.
ALTER TABLE access_log ADD COLUMN detail jsonb;
