-- Notifications leave the writing transactions. Postgres serializes the
-- commits of transactions that NOTIFY (a global lock held through the WAL
-- flush), so these triggers made every enqueue and every change of an
-- owned job wait for the disk sync of the one before: API enqueues topped
-- out near one per fsync. The store now sends the same notifications
-- after each commit, in batches, from a transaction of their own.
DROP TRIGGER jobs_notify_available ON jobs;
DROP FUNCTION kiln_notify_available();
DROP TRIGGER jobs_notify_cancel ON jobs;
DROP FUNCTION kiln_notify_cancel();
DROP TRIGGER jobs_notify_changed ON jobs;
DROP TRIGGER finished_jobs_notify_changed ON finished_jobs;
DROP FUNCTION kiln_notify_changed();
