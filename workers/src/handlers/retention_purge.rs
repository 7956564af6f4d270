use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::{DataClass, JobError, RetentionPurge, RetentionPurgeResult, RetentionSettings};
use kiln_store::{Objects, Store, metrics::metrics};

use super::account_purge::{Erasure, erase_account};
use crate::{Clock, Handler, JobContext, Outcome};

pub struct RetentionPurgeHandler {
    pub retention: RetentionSettings,
    pub clock: Clock,
    /// Deleted accounts' images are objects too.
    pub objects: Objects,
}

/// Rows per statement: each batch commits on its own, so no lock is held
/// long and a purge killed halfway has kept what it did.
const BATCH: u32 = 1000;

#[async_trait]
impl Handler<RetentionPurge> for RetentionPurgeHandler {
    async fn run(
        &self,
        _job: RetentionPurge,
        ctx: &JobContext,
    ) -> Result<Outcome<RetentionPurgeResult>, JobError> {
        let now = self.clock.now();
        let mut result = RetentionPurgeResult::default();
        for class in DataClass::ALL {
            let before = cutoff(class, self.retention.period(class), now);
            let mut purged = 0u64;
            loop {
                if ctx.is_cancelled() {
                    break;
                }
                let n = match class {
                    DataClass::DeletedAccounts => {
                        self.erase_deleted_accounts(ctx.store(), before).await?
                    }
                    _ => ctx.store().purge(class, before, BATCH).await?,
                };
                purged += n;
                metrics()
                    .retention_purged
                    .with_label_values(&[class.as_str()])
                    .inc_by(n);
                // Deleted accounts: one pass (an account whose jobs still
                // run is left for the next purge, not retried in a loop).
                if n < u64::from(BATCH) || class == DataClass::DeletedAccounts {
                    break;
                }
            }
            result.purged.insert(class, purged);
        }
        Ok(Outcome::Done(result))
    }
}

impl RetentionPurgeHandler {
    /// Erases accounts deleted before `before` whose own `account_purge`
    /// did not finish; returns how many.
    async fn erase_deleted_accounts(
        &self,
        store: &Store,
        before: DateTime<Utc>,
    ) -> Result<u64, JobError> {
        let mut erased = 0;
        for user in store.deleted_accounts(before, BATCH).await? {
            if let Erasure::Done(_) = erase_account(store, &self.objects, user).await? {
                erased += 1;
            }
        }
        Ok(erased)
    }
}

/// Rows of `class` older than this are due. Finished jobs are kept in
/// whole UTC days: the cutoff moves back to midnight, so on Postgres each
/// expired day is a partition dropped whole and no row is deleted one by
/// one (a job stays at most a day longer than its retention, never less).
fn cutoff(class: DataClass, period: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    let period = TimeDelta::from_std(period).unwrap_or(TimeDelta::MAX);
    let before = now
        .checked_sub_signed(period)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    match class {
        DataClass::FinishedJobs => before
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(before, |midnight| midnight.and_utc()),
        _ => before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn finished_jobs_end_at_midnight_and_the_rest_to_the_instant() {
        let now = Utc.with_ymd_and_hms(2026, 12, 8, 15, 30, 0).unwrap();
        assert_eq!(
            cutoff(DataClass::FinishedJobs, 7 * DAY, now),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            cutoff(DataClass::AccessLog, 180 * DAY, now),
            now - TimeDelta::days(180)
        );
    }
}
