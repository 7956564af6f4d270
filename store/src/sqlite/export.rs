use async_trait::async_trait;
use kiln_jobs::{OrderId, UserId};
use uuid::Uuid;

use super::SqliteStore;
use crate::{
    StoreError,
    export::{Export, ExportedGeneration},
    generations::ModerationRecord,
    orders::Order,
    rows::{
        self, EXPORTED_GENERATION_COLUMNS, ExportedGenerationRow, MODERATION_COLUMNS,
        ModerationRow, ORDER_COLUMNS, OrderRow,
    },
};

#[async_trait]
impl Export for SqliteStore {
    async fn generations_page(
        &self,
        owner: UserId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ExportedGeneration>, StoreError> {
        let sql = format!(
            "SELECT {EXPORTED_GENERATION_COLUMNS} FROM generations
             WHERE owner = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let rows: Vec<ExportedGenerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(after.map(|id| id.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(ExportedGeneration::try_from).collect()
    }

    async fn moderation_page(
        &self,
        owner: UserId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ModerationRecord>, StoreError> {
        let sql = format!(
            "SELECT {MODERATION_COLUMNS} FROM moderation_decisions
             WHERE owner = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let rows: Vec<ModerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(after.map(|id| id.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(ModerationRecord::try_from).collect()
    }

    async fn orders_page(
        &self,
        owner: UserId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders
             WHERE user_id = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(after.map(|o| o.0.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows::orders(rows)
    }
}
