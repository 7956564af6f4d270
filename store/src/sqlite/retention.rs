use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::DataClass;
use uuid::Uuid;

use super::SqliteStore;
use crate::{
    Queue, StoreError,
    codec::{Id, Time},
    retention::Retention,
};

/// (table, time column) of each table a class purges; rows go by rowid.
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
impl Retention for SqliteStore {
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
                "DELETE FROM {table} WHERE rowid IN (
                     SELECT rowid FROM {table} WHERE {at} < ?1 ORDER BY {at} LIMIT ?2)"
            );
            purged += sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(Time(before))
                .bind(i64::from(limit))
                .execute(&self.writer)
                .await?
                .rows_affected();
        }
        Ok(purged)
    }

    async fn images_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        existing(&self.reader, "images", ids).await
    }

    async fn generations_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        existing(&self.reader, "generations", ids).await
    }
}

/// The ids of `ids` that `table` has; the ids travel as one JSON array.
async fn existing(
    pool: &sqlx::SqlitePool,
    table: &str,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    // The table name is one of this file's constants.
    let sql = format!("SELECT id FROM {table} WHERE id IN (SELECT value FROM json_each(?1))");
    let found: Vec<Id> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::json!(ids).to_string())
        .fetch_all(pool)
        .await?;
    Ok(found.into_iter().map(|id| id.0).collect())
}
