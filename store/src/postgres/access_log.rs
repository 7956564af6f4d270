use async_trait::async_trait;
use kiln_jobs::UserId;

use super::PgStore;
use crate::{
    StoreError,
    access_log::{AccessEntry, AccessEvent, AccessLog, Origin},
    rows::{self, ACCESS_COLUMNS, AccessRow},
};

#[async_trait]
impl AccessLog for PgStore {
    async fn record_access(
        &self,
        user: Option<UserId>,
        event: AccessEvent,
        origin: &Origin,
    ) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO access_log (user_id, event, ip, user_agent) VALUES ($1, $2, $3, $4)
             RETURNING id",
        )
        .bind(user.map(|u| u.0))
        .bind(event.as_str())
        .bind(&origin.ip)
        .bind(&origin.user_agent)
        .fetch_one(&self.pool)
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
            "INSERT INTO access_log (user_id, event, ip, user_agent, detail)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(operator.0)
        .bind(event.as_str())
        .bind(&origin.ip)
        .bind(&origin.user_agent)
        .bind(detail)
        .fetch_one(&self.pool)
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
             WHERE user_id = $1 AND id < coalesce($2, 9223372036854775807)
             ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.0)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::access_entries(rows)
    }

    async fn note_ip(&self, user: UserId, ip: &str) -> Result<bool, StoreError> {
        let new = sqlx::query(
            "INSERT INTO account_ips (user_id, ip) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(user.0)
        .bind(ip)
        .execute(&self.pool)
        .await?;
        Ok(new.rows_affected() > 0)
    }
}
