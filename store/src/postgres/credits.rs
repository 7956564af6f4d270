use async_trait::async_trait;
use kiln_jobs::UserId;
use sqlx::PgConnection;

use super::PgStore;
use crate::{
    StoreError,
    credits::{CreditBalance, CreditEntry, Credits},
    rows::{self, CREDIT_ENTRY_COLUMNS, CreditEntryRow},
};

/// [`Credits::grant_credits`] inside the caller's transaction: the entry
/// and the balance in one statement.
pub(super) async fn grant_on(
    conn: &mut PgConnection,
    user: UserId,
    amount: u32,
    reason: &str,
) -> Result<bool, StoreError> {
    if amount == 0 {
        return Ok(false);
    }
    let granted: Option<i32> = sqlx::query_scalar(
        "WITH entry AS (
             INSERT INTO credit_entries (user_id, kind, amount, reason)
             VALUES ($1, 'grant', $2, $3)
             ON CONFLICT (user_id, reason) WHERE kind = 'grant' DO NOTHING
             RETURNING amount)
         UPDATE credit_accounts SET balance = balance + entry.amount, updated_at = now()
         FROM entry WHERE user_id = $1
         RETURNING 1",
    )
    .bind(user.0)
    .bind(i64::from(amount))
    .bind(reason)
    .fetch_optional(conn)
    .await?;
    Ok(granted.is_some())
}

#[async_trait]
impl Credits for PgStore {
    async fn credit_balance(&self, user: UserId) -> Result<CreditBalance, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT balance, reserved FROM credit_accounts WHERE user_id = $1")
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(rows::credit_balance(row))
    }

    async fn credit_entries(
        &self,
        user: UserId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CreditEntry>, StoreError> {
        let sql = format!(
            "SELECT {CREDIT_ENTRY_COLUMNS} FROM credit_entries
             WHERE user_id = $1 AND id < coalesce($2, 9223372036854775807)
             ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<CreditEntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.0)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::credit_entries(rows)
    }

    async fn grant_credits(
        &self,
        user: UserId,
        amount: u32,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let granted = grant_on(&mut conn, user, amount, reason).await?;
        conn.done().await?;
        Ok(granted)
    }
}
