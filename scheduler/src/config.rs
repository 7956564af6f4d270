use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// When finished jobs past their retention are pruned (cron with seconds).
    pub prune_jobs_cron: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            prune_jobs_cron: "0 17 * * * *".to_owned(),
        }
    }
}
