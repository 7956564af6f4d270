use std::{collections::HashSet, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::{
    DataClass, JobError, OperatorExportKind, RetentionPurge, RetentionPurgeResult,
    RetentionSettings,
};
use kiln_store::{Objects, Store, metrics::metrics};
use uuid::Uuid;

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
                    DataClass::OrphanedObjects => self.sweep_orphans(ctx.store(), before).await?,
                    DataClass::Exports => self.delete_exports(before).await?,
                    _ => ctx.store().purge(class, before, BATCH).await?,
                };
                purged += n;
                metrics()
                    .retention_purged
                    .with_label_values(&[class.as_str()])
                    .inc_by(n);
                // Deleted accounts, orphans and exports: one pass (an
                // account whose jobs still run is left for the next purge;
                // a listing of the bucket goes once).
                if n < u64::from(BATCH)
                    || matches!(
                        class,
                        DataClass::DeletedAccounts
                            | DataClass::OrphanedObjects
                            | DataClass::Exports
                    )
                {
                    break;
                }
            }
            // The operators' archives of this class go with its records.
            if let Some(kind) = archive_of(class) {
                let n = self.expire_archives(ctx.store(), kind, before).await?;
                metrics()
                    .retention_purged
                    .with_label_values(&[class.as_str()])
                    .inc_by(n);
                purged += n;
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

impl RetentionPurgeHandler {
    /// Deletes the objects under `images/` and `refs/` written before
    /// `before` whose image or generation no longer exists; returns how
    /// many. Keys kiln does not name (`images/<id>.<ext>`, `refs/<id>/…`)
    /// are left alone.
    async fn sweep_orphans(&self, store: &Store, before: DateTime<Utc>) -> Result<u64, JobError> {
        use futures::StreamExt;
        let mut removed = 0;
        for prefix in [IMAGES, REFS] {
            let mut listing = self.objects.list(prefix)?.chunks(BATCH as usize);
            while let Some(chunk) = listing.next().await {
                let mut candidates = Vec::new();
                for object in chunk {
                    let object = object?;
                    if object.last_modified >= before {
                        continue;
                    }
                    if let Some(id) = owner_of(prefix, &object.key) {
                        candidates.push((object.key, id));
                    }
                }
                let ids: Vec<Uuid> = candidates.iter().map(|(_, id)| *id).collect();
                let existing: HashSet<Uuid> = if prefix == IMAGES {
                    store.images_that_exist(&ids).await?
                } else {
                    store.generations_that_exist(&ids).await?
                }
                .into_iter()
                .collect();
                for (key, id) in candidates {
                    if !existing.contains(&id) {
                        self.objects.delete(&key).await?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Deletes the export files written before `before`; returns how many.
    ///
    /// Found by listing `exports/`, not through the `data_export` jobs'
    /// results: finished jobs may be pruned before their files are due
    /// (`finished_jobs_days` can be shorter than `export_days`), and a file
    /// whose job failed after the upload, or whose row went with its
    /// account, has no job to find it by. The listing is as cheap as it
    /// gets: exports live `export_days` (a week by default), so it holds
    /// about a week of exports, a page of 1,000 per request on S3. Deleted
    /// as they are listed, in batches, so memory holds one batch of keys.
    /// There is no row to delete after: a job's result keeps only the key,
    /// and `GET /v1/me/exports/{id}` shows an export past its days as
    /// `expired` with no link.
    async fn delete_exports(&self, before: DateTime<Utc>) -> Result<u64, JobError> {
        use futures::StreamExt;
        let mut listed = self.objects.list(kiln_jobs::DataExport::FOLDERS)?;
        let mut due = Vec::with_capacity(BATCH as usize);
        let mut deleted = 0;
        while let Some(object) = listed.next().await {
            let object = object?;
            if object.last_modified < before {
                due.push(object.key);
            }
            if due.len() >= BATCH as usize {
                deleted += self.delete_objects(&mut due).await?;
            }
        }
        deleted += self.delete_objects(&mut due).await?;
        Ok(deleted)
    }

    /// Deletes the scheduled exports of `kind` whose period ended by
    /// `before` (file first, then its record); returns how many.
    async fn expire_archives(
        &self,
        store: &Store,
        kind: OperatorExportKind,
        before: DateTime<Utc>,
    ) -> Result<u64, JobError> {
        let mut deleted = 0;
        loop {
            let due = store.expired_operator_exports(kind, before, BATCH).await?;
            for export in &due {
                self.objects.delete(&export.object_key).await?;
                store.delete_operator_export(export.id).await?;
            }
            deleted += due.len() as u64;
            if due.len() < BATCH as usize {
                return Ok(deleted);
            }
        }
    }

    async fn delete_objects(&self, keys: &mut Vec<String>) -> Result<u64, JobError> {
        for key in keys.iter() {
            self.objects.delete(key).await?;
        }
        let n = keys.len() as u64;
        keys.clear();
        Ok(n)
    }
}

/// The scheduled export that holds a class's records, if one does.
fn archive_of(class: DataClass) -> Option<OperatorExportKind> {
    match class {
        DataClass::Payments => Some(OperatorExportKind::Accounting),
        DataClass::AccessLog => Some(OperatorExportKind::AccessLog),
        _ => None,
    }
}

const IMAGES: &str = "images/";
const REFS: &str = "refs/";

/// The image (`images/<id>.<ext>`) or generation (`refs/<id>/…`) an object
/// belongs to, by its key.
fn owner_of(prefix: &str, key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix(prefix)?;
    let id = if prefix == IMAGES {
        rest.rsplit_once('.')?.0
    } else {
        rest.split_once('/')?.0
    };
    id.parse().ok()
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
    fn objects_belong_to_the_id_their_key_names() {
        let id = Uuid::now_v7();
        assert_eq!(owner_of(IMAGES, &format!("images/{id}.png")), Some(id));
        assert_eq!(owner_of(IMAGES, &format!("images/{id}.webp")), Some(id));
        assert_eq!(owner_of(REFS, &format!("refs/{id}/0.jpg")), Some(id));
        assert_eq!(owner_of(IMAGES, "images/not-an-id.png"), None);
        assert_eq!(owner_of(REFS, &format!("refs/{id}")), None);
    }

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
