use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::Job;

/// Deletes what the retention policy says is due: one pass per data
/// class, each in bounded batches, so a purge killed halfway and run again
/// ends where one uninterrupted run would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPurge {}

impl Job for RetentionPurge {
    type Result = RetentionPurgeResult;
    const KIND: &'static str = "retention_purge";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: u32 = 5;
    const TIMEOUT: Duration = Duration::from_secs(3600);
}

/// What a purge removed, by data class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPurgeResult {
    pub purged: BTreeMap<DataClass, u64>,
}

/// The kinds of data the privacy policy keeps for a set time. Each is
/// purged in its own pass, and counted under its name in the job's result
/// and in `kiln_retention_purged_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataClass {
    /// Jobs that ended (succeeded, failed, cancelled), with their keys.
    FinishedJobs,
    /// Access and audit log entries, and the addresses accounts were used from.
    AccessLog,
    /// Moderation decisions.
    Moderation,
    /// Payment orders and the merchant's notification ids.
    Payments,
    /// Deleted accounts not erased yet (their `account_purge` did not
    /// finish): counted in accounts erased.
    DeletedAccounts,
    /// Objects in storage no row points at (an image or reference image
    /// whose row is gone), a day after they were written.
    OrphanedObjects,
    /// Data export files (`exports/<user>/<job>.zip`), found by listing
    /// object storage: counted in files deleted.
    Exports,
}

impl DataClass {
    pub const ALL: [DataClass; 7] = [
        DataClass::FinishedJobs,
        DataClass::AccessLog,
        DataClass::Moderation,
        DataClass::Payments,
        DataClass::DeletedAccounts,
        DataClass::OrphanedObjects,
        DataClass::Exports,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::FinishedJobs => "finished_jobs",
            DataClass::AccessLog => "access_log",
            DataClass::Moderation => "moderation",
            DataClass::Payments => "payments",
            DataClass::DeletedAccounts => "deleted_accounts",
            DataClass::OrphanedObjects => "orphaned_objects",
            DataClass::Exports => "exports",
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
/// A year as retention counts it: 366 days, so "five years" is never short
/// by a leap day.
const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);

/// How long each class is kept (`[retention]`). The privacy policy's
/// periods are the defaults, and limits a configuration cannot cross.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// A deleted account's prompts, images and personal fields are erased
    /// within this many days (at most 30).
    pub deleted_account_days: u32,
    /// Access and audit log entries are kept this long (at least 180).
    pub access_log_days: u32,
    /// Moderation decisions are kept this long (at least 180).
    pub moderation_days: u32,
    /// Payment records are kept this long (at least 5 years).
    pub payment_years: u32,
    /// Finished jobs are kept this long.
    pub finished_jobs_days: u32,
    /// Data exports (the ZIP and its link) are kept this long.
    pub export_days: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            deleted_account_days: 30,
            access_log_days: 180,
            moderation_days: 180,
            payment_years: 5,
            finished_jobs_days: 7,
            export_days: 7,
        }
    }
}

impl RetentionSettings {
    /// Refuses a period the privacy policy does not allow; the error names
    /// the setting (`retention.<name>`) and the limit.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u32, Limit); 6] = [
            (
                "deleted_account_days",
                self.deleted_account_days,
                Limit::AtMost(30),
            ),
            ("access_log_days", self.access_log_days, Limit::AtLeast(180)),
            ("moderation_days", self.moderation_days, Limit::AtLeast(180)),
            ("payment_years", self.payment_years, Limit::AtLeast(5)),
            (
                "finished_jobs_days",
                self.finished_jobs_days,
                Limit::AtLeast(1),
            ),
            ("export_days", self.export_days, Limit::AtLeast(1)),
        ];
        for (name, value, limit) in checks {
            let ok = match limit {
                Limit::AtLeast(min) => value >= min,
                Limit::AtMost(max) => value <= max,
            };
            if !ok {
                let (word, bound) = match limit {
                    Limit::AtLeast(min) => ("at least", min),
                    Limit::AtMost(max) => ("at most", max),
                };
                return Err(format!(
                    "retention.{name} (KILN_RETENTION_{}): {value} is not allowed; the privacy policy requires {word} {bound}",
                    name.to_ascii_uppercase()
                ));
            }
        }
        Ok(())
    }

    /// How long rows of `class` are kept.
    pub fn period(&self, class: DataClass) -> Duration {
        match class {
            DataClass::FinishedJobs => DAY * self.finished_jobs_days,
            DataClass::AccessLog => DAY * self.access_log_days,
            DataClass::Moderation => DAY * self.moderation_days,
            DataClass::Payments => YEAR * self.payment_years,
            DataClass::DeletedAccounts => DAY * self.deleted_account_days,
            // Long enough that no object is taken between its write and
            // the write of the row that points at it.
            DataClass::OrphanedObjects => DAY,
            DataClass::Exports => DAY * self.export_days,
        }
    }
}

#[derive(Clone, Copy)]
enum Limit {
    AtLeast(u32),
    AtMost(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_policy_and_pass() {
        let s = RetentionSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.period(DataClass::AccessLog), DAY * 180);
        assert_eq!(s.period(DataClass::Payments), DAY * 366 * 5);
    }

    #[test]
    fn each_limit_is_refused_by_name() {
        let cases = [
            RetentionSettings {
                deleted_account_days: 31,
                ..Default::default()
            },
            RetentionSettings {
                access_log_days: 179,
                ..Default::default()
            },
            RetentionSettings {
                moderation_days: 179,
                ..Default::default()
            },
            RetentionSettings {
                payment_years: 4,
                ..Default::default()
            },
        ];
        let names = [
            "deleted_account_days",
            "access_log_days",
            "moderation_days",
            "payment_years",
        ];
        for (settings, name) in cases.iter().zip(names) {
            let err = settings.validate().unwrap_err();
            assert!(err.starts_with(&format!("retention.{name} ")), "{err}");
        }
        // The policy's own periods pass at the limit.
        let at_limits = RetentionSettings {
            deleted_account_days: 30,
            access_log_days: 180,
            moderation_days: 180,
            payment_years: 5,
            ..Default::default()
        };
        assert_eq!(at_limits.validate(), Ok(()));
    }
}
