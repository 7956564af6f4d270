use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// When the retention purge runs (cron with seconds, UTC).
    pub retention_purge_cron: String,
    /// When the month's payment records are exported as CSV for the
    /// accounts (the month before the slot's).
    pub accounting_export_cron: String,
    /// When the day's access log is archived (the day before the slot's).
    pub access_log_archive_cron: String,
    /// After downtime, fire each plan's latest missed slot once at start
    /// (never every missed slot); false: wait for the next slot.
    pub catch_up: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            retention_purge_cron: "0 17 3 * * *".to_owned(),
            accounting_export_cron: "0 0 4 1 * *".to_owned(),
            access_log_archive_cron: "0 45 3 * * *".to_owned(),
            catch_up: true,
        }
    }
}
