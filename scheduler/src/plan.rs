use std::str::FromStr;

use cron::Schedule;
use kiln_jobs::RetentionPurge;
use kiln_store::NewJob;

use crate::SchedulerConfig;

/// A periodic job: its name (the key of its record in `cron_plans` and
/// part of every slot's idempotency key), when it fires, and the job it
/// enqueues.
pub struct Plan {
    pub name: &'static str,
    /// The setting it comes from, for `kiln schedule --list`.
    pub setting: &'static str,
    pub schedule: Schedule,
    pub job: NewJob,
}

/// Every plan, from the configuration. The error names the bad setting.
pub fn plans(config: &SchedulerConfig) -> Result<Vec<Plan>, String> {
    let parse = |setting: &str, expr: &str| {
        Schedule::from_str(expr)
            .map_err(|e| format!("scheduler.{setting} {expr:?} is not a cron expression: {e}"))
    };
    Ok(vec![Plan {
        name: "retention_purge",
        setting: "retention_purge_cron",
        schedule: parse("retention_purge_cron", &config.retention_purge_cron)?,
        job: NewJob::of(&RetentionPurge {}).map_err(|e| e.to_string())?,
    }])
}
