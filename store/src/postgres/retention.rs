use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::DataClass;
use uuid::Uuid;

use super::PgStore;
use crate::{Queue, StoreError, retention::Retention};

/// (table, time column) of each table a class purges; rows go by ctid
/// (found through the time column's index, deleted without a second lookup).
fn tables(class: DataClass) -> &'static [(&'static str, &'static str)] {
    match class {
        // Finished jobs go by `prune_finished`; deleted accounts are erased
        // by the worker, objects first (`Deletion`); orphaned objects and
        // exports are objects only, deleted by the worker.
        DataClass::FinishedJobs
        | DataClass::DeletedAccounts
        | DataClass::OrphanedObjects
        | DataClass::Exports => &[],
        DataClass::AccessLog => &[
            ("access_log", "created_at"),
            ("account_ips", "first_seen"),
            // Answered requests only: an open one has no `completed_at`.
            ("subject_requests", "completed_at"),
        ],
        DataClass::Moderation => &[("moderation_decisions", "created_at")],
        DataClass::Payments => &[
            ("payment_orders", "created_at"),
            ("payment_events", "received_at"),
        ],
    }
}

#[async_trait]
impl Retention for PgStore {
    async fn purge(
        &self,
        class: DataClass,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        if class == DataClass::FinishedJobs {
            return self.prune_finished(before, limit).await;
        }
        let mut purged = 0;
        for (table, at) in tables(class) {
            // Table and column names are this file's constants.
            let sql = format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {table} WHERE {at} < $1 ORDER BY {at} LIMIT $2))"
            );
            purged += sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(before)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(purged)
    }

    async fn images_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM images WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn generations_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM generations WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
