use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{JobError, PruneJobs, PruneJobsResult};

use crate::{Handler, JobContext, Outcome};

pub struct PruneJobsHandler {
    pub retention: Duration,
}

const BATCH: u32 = 1000;
const DAY: Duration = Duration::from_secs(24 * 3600);

#[async_trait]
impl Handler<PruneJobs> for PruneJobsHandler {
    async fn run(
        &self,
        _job: PruneJobs,
        ctx: &JobContext,
    ) -> Result<Outcome<PruneJobsResult>, JobError> {
        let older_than = whole_days(self.retention, Utc::now());
        let mut deleted = 0u64;
        // Small batches keep each delete's locks short.
        loop {
            if ctx.is_cancelled() {
                break;
            }
            let n = ctx.store().prune_finished(older_than, BATCH).await?;
            deleted += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        Ok(Outcome::Done(PruneJobsResult { deleted }))
    }
}

/// A retention of a day or more is kept in whole UTC days: the cutoff
/// moves back to midnight, so on Postgres each expired day is a partition
/// dropped whole and no row is deleted one by one. A job stays at most a
/// day longer than the retention, never less.
fn whole_days(retention: Duration, now: DateTime<Utc>) -> Duration {
    if retention < DAY {
        return retention;
    }
    let cutoff = chrono::TimeDelta::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r));
    let midnight = cutoff.and_then(|c| c.date_naive().and_hms_opt(0, 0, 0));
    midnight
        .and_then(|m| (now - m.and_utc()).to_std().ok())
        .unwrap_or(retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn long_retention_ends_at_midnight() {
        let now = Utc.with_ymd_and_hms(2026, 12, 8, 15, 30, 0).unwrap();
        let week = whole_days(7 * DAY, now);
        assert_eq!(
            now - chrono::TimeDelta::from_std(week).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        let short = Duration::from_secs(3600);
        assert_eq!(whole_days(short, now), short);
        assert_eq!(whole_days(Duration::ZERO, now), Duration::ZERO);
    }
}
