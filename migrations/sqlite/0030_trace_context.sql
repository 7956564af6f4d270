-- As on Postgres (see its 0030_trace_context.sql).
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE finished_jobs ADD COLUMN traceparent TEXT;
