-- Deleted accounts waiting to be erased, found by the retention purge.
CREATE INDEX users_deleted ON users (deleted_at) WHERE deleted_at IS NOT NULL;

-- Notices are system jobs that name their user in the payload; erasing an
-- account deletes them by it.
CREATE INDEX jobs_notice_user ON jobs ((payload->>'user_id'))
    WHERE owner IS NULL AND kind IN ('send_email', 'send_sms');
CREATE INDEX finished_jobs_notice_user ON finished_jobs ((payload->>'user_id'))
    WHERE owner IS NULL AND kind IN ('send_email', 'send_sms');
