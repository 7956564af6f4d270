use std::str::FromStr;

use cron::Schedule;
use kiln_jobs::PruneJobs;
use kiln_store::NewJob;

use crate::SchedulerConfig;

/// A periodic job: its name (part of every slot's idempotency key), when it
/// fires, and the job it enqueues.
pub struct Plan {
    pub name: &'static str,
    pub schedule: Schedule,
    pub job: NewJob,
}

/// Every plan, from the configuration. The error names the bad setting.
pub fn plans(config: &SchedulerConfig) -> Result<Vec<Plan>, String> {
    let parse = |setting: &str, expr: &str| {
        Schedule::from_str(expr)
            .map_err(|e| format!("scheduler.{setting} {expr:?} is not a cron expression: {e}"))
    };
    let job = |j: &PruneJobs| NewJob::of(j).map_err(|e| e.to_string());
    Ok(vec![Plan {
        name: "prune_jobs",
        schedule: parse("prune_jobs_cron", &config.prune_jobs_cron)?,
        job: job(&PruneJobs {})?,
    }])
}
