use async_trait::async_trait;
use uuid::Uuid;

use super::PgStore;
use crate::{
    StoreError,
    codec::{Id, Time},
    webhooks::{DELIVERY_COLUMNS, Delivery, DeliveryRow, Webhook, WebhookRow, Webhooks},
};

#[async_trait]
impl Webhooks for PgStore {
    async fn webhook(&self, job_id: Uuid) -> Result<Option<Webhook>, StoreError> {
        let row: Option<WebhookRow> =
            sqlx::query_as("SELECT job_id, owner, url, events FROM webhooks WHERE job_id = $1")
                .bind(Id(job_id))
                .fetch_optional(&self.pool)
                .await?;
        row.map(Webhook::try_from).transpose()
    }

    async fn record_delivery(&self, d: &Delivery) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (job_id, event_id, event, attempt, status_code,
                                             outcome, error, duration_ms, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Id(d.job_id))
        .bind(Id(d.event_id))
        .bind(&d.event)
        .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
        .bind(d.status_code.map(i32::from))
        .bind(d.outcome.as_str())
        .bind(&d.error)
        .bind(i32::try_from(d.duration_ms).unwrap_or(i32::MAX))
        .bind(Time(d.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deliveries(&self, job_id: Uuid, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE job_id = $1
             ORDER BY id LIMIT $2"
        )))
        .bind(Id(job_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }
}
