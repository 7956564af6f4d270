use std::str::FromStr;

use chrono::{DateTime, Utc};
use cron::Schedule;
use kiln_jobs::{OperatorExport, OperatorExportKind, RetentionPurge};
use kiln_store::NewJob;

use crate::SchedulerConfig;

/// A periodic job: its name (the key of its record in `cron_plans` and
/// part of every slot's idempotency key), when it fires, and the job it
/// enqueues for a slot.
pub struct Plan {
    pub name: &'static str,
    /// The setting it comes from, for `kiln schedule --list`.
    pub setting: &'static str,
    pub schedule: Schedule,
    /// The job for a slot (an export's period is the slot's).
    pub job: fn(DateTime<Utc>) -> Result<NewJob, String>,
}

fn retention_purge(_: DateTime<Utc>) -> Result<NewJob, String> {
    NewJob::of(&RetentionPurge {}).map_err(|e| e.to_string())
}

fn accounting_export(slot: DateTime<Utc>) -> Result<NewJob, String> {
    NewJob::of(&OperatorExport {
        export: OperatorExportKind::Accounting,
        slot,
    })
    .map_err(|e| e.to_string())
}

fn access_log_archive(slot: DateTime<Utc>) -> Result<NewJob, String> {
    NewJob::of(&OperatorExport {
        export: OperatorExportKind::AccessLog,
        slot,
    })
    .map_err(|e| e.to_string())
}

/// Every plan, from the configuration. The error names the bad setting.
pub fn plans(config: &SchedulerConfig) -> Result<Vec<Plan>, String> {
    let parse = |setting: &str, expr: &str| {
        Schedule::from_str(expr)
            .map_err(|e| format!("scheduler.{setting} {expr:?} is not a cron expression: {e}"))
    };
    Ok(vec![
        Plan {
            name: "retention_purge",
            setting: "retention_purge_cron",
            schedule: parse("retention_purge_cron", &config.retention_purge_cron)?,
            job: retention_purge,
        },
        Plan {
            name: "accounting_export",
            setting: "accounting_export_cron",
            schedule: parse("accounting_export_cron", &config.accounting_export_cron)?,
            job: accounting_export,
        },
        Plan {
            name: "access_log_archive",
            setting: "access_log_archive_cron",
            schedule: parse("access_log_archive_cron", &config.access_log_archive_cron)?,
            job: access_log_archive,
        },
    ])
}
