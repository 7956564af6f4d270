use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{OperatorExportKind, UserId};
use uuid::Uuid;

use super::PgStore;
use crate::{
    StoreError,
    access_log::AccessEntry,
    codec::{Id, Time},
    operator_exports::{
        ARCHIVE_COLUMNS, ArchiveRow, EXPORT_COLUMNS, ExportRow, OperatorExportRecord,
        OperatorExports, archived, records,
    },
    orders::Order,
    rows::{ORDER_COLUMNS, OrderRow, orders},
};

#[async_trait]
impl OperatorExports for PgStore {
    async fn paid_orders(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders
             WHERE paid_at >= $1 AND paid_at < $2 AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(start)
            .bind(end)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        orders(rows)
    }

    async fn access_entries_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(Option<UserId>, AccessEntry)>, StoreError> {
        let sql = format!(
            "SELECT {ARCHIVE_COLUMNS} FROM access_log
             WHERE created_at >= $1 AND created_at < $2 AND id > $3
             ORDER BY id LIMIT $4"
        );
        let rows: Vec<ArchiveRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(start)
            .bind(end)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        archived(rows)
    }

    async fn record_operator_export(&self, r: &OperatorExportRecord) -> Result<Uuid, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO operator_exports
                 (id, kind, period_start, period_end, object_key, rows, bytes, created_at,
                  expires_at, job_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (kind, period_start) DO UPDATE SET
                 period_end = excluded.period_end, object_key = excluded.object_key,
                 rows = excluded.rows, bytes = excluded.bytes,
                 created_at = excluded.created_at, expires_at = excluded.expires_at,
                 job_id = excluded.job_id
             RETURNING id",
        )
        .bind(r.id)
        .bind(r.kind.as_str())
        .bind(r.period_start)
        .bind(r.period_end)
        .bind(&r.object_key)
        .bind(r.rows as i64)
        .bind(r.bytes as i64)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.job_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn operator_exports(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<OperatorExportRecord>, StoreError> {
        let sql = format!(
            "SELECT {EXPORT_COLUMNS} FROM operator_exports
             WHERE $1::uuid IS NULL OR id < $1 ORDER BY id DESC LIMIT $2"
        );
        let rows: Vec<ExportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(before.map(Id))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }

    async fn expired_operator_exports(
        &self,
        kind: OperatorExportKind,
        ended_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OperatorExportRecord>, StoreError> {
        let sql = format!(
            "SELECT {EXPORT_COLUMNS} FROM operator_exports
             WHERE kind = $1 AND period_end <= $2 ORDER BY period_end LIMIT $3"
        );
        let rows: Vec<ExportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(Time(ended_by))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }

    async fn delete_operator_export(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM operator_exports WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
