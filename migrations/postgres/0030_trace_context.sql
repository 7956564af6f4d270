-- The W3C `traceparent` of the request (or job) that enqueued a job: its
-- worker's spans continue that trace. NULL when tracing is off.
ALTER TABLE jobs ADD COLUMN traceparent text;
ALTER TABLE finished_jobs ADD COLUMN traceparent text;
