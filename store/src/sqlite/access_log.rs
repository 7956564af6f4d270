use async_trait::async_trait;
use kiln_jobs::UserId;

use super::{SqliteStore, now_ms};
use crate::{
    StoreError,
    access_log::{AccessEntry, AccessEvent, AccessLog, Origin},
    rows::{self, ACCESS_COLUMNS, AccessRow},
};

#[async_trait]
impl AccessLog for SqliteStore {
    async fn record_access(
        &self,
        user: Option<UserId>,
        event: AccessEvent,
        origin: &Origin,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO access_log (user_id, event, ip, user_agent, created_at)
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(user.map(|u| u.to_string()))
        .bind(event.as_str())
        .bind(&origin.ip)
        .bind(&origin.user_agent)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn record_audit(
        &self,
        operator: UserId,
        event: AccessEvent,
        origin: &Origin,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO access_log (user_id, event, ip, user_agent, detail, created_at)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(operator.to_string())
        .bind(event.as_str())
        .bind(&origin.ip)
        .bind(&origin.user_agent)
        .bind(detail.to_string())
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn access_log(
        &self,
        user: UserId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AccessEntry>, StoreError> {
        let sql = format!(
            "SELECT {ACCESS_COLUMNS} FROM access_log
             WHERE user_id = ? AND id < coalesce(?, 9223372036854775807)
             ORDER BY id DESC LIMIT ?"
        );
        let rows: Vec<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.to_string())
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows::access_entries(rows)
    }

    async fn note_ip(&self, user: UserId, ip: &str) -> Result<bool, StoreError> {
        let new = sqlx::query(
            "INSERT INTO account_ips (user_id, ip, first_seen) VALUES (?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(user.to_string())
        .bind(ip)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(new.rows_affected() > 0)
    }
}
