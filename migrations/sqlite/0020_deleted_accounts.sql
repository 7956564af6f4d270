-- Deleted accounts waiting to be erased, found by the retention purge.
CREATE INDEX users_deleted ON users (deleted_at) WHERE deleted_at IS NOT NULL;

-- Notices name their user in the payload (see Postgres' 0020).
CREATE INDEX jobs_notice_user ON jobs (json_extract(payload, '$.user_id'))
    WHERE owner IS NULL AND kind IN ('send_email', 'send_sms');
CREATE INDEX finished_jobs_notice_user ON finished_jobs (json_extract(payload, '$.user_id'))
    WHERE owner IS NULL AND kind IN ('send_email', 'send_sms');
