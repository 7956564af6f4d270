use async_trait::async_trait;
use kiln_jobs::UserId;
use sqlx::SqliteConnection;

use super::{SqliteStore, now_ms};
use crate::{
    StoreError,
    credits::{CreditBalance, CreditEntry, Credits},
    rows::{self, CREDIT_ENTRY_COLUMNS, CreditEntryRow},
};

/// [`Credits::grant_credits`] inside the caller's transaction.
pub(super) async fn grant_in(
    conn: &mut SqliteConnection,
    user: UserId,
    amount: u32,
    reason: &str,
) -> Result<bool, StoreError> {
    if amount == 0 {
        return Ok(false);
    }
    let user = user.to_string();
    let entry = sqlx::query(
        "INSERT INTO credit_entries (user_id, kind, amount, reason, created_at)
         VALUES (?, 'grant', ?, ?, ?)
         ON CONFLICT (user_id, reason) WHERE kind = 'grant' DO NOTHING",
    )
    .bind(&user)
    .bind(i64::from(amount))
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    if entry.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE credit_accounts SET balance = balance + ?, updated_at = ? WHERE user_id = ?",
    )
    .bind(i64::from(amount))
    .bind(now_ms())
    .bind(&user)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

#[async_trait]
impl Credits for SqliteStore {
    async fn credit_balance(&self, user: UserId) -> Result<CreditBalance, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT balance, reserved FROM credit_accounts WHERE user_id = ?")
                .bind(user.to_string())
                .fetch_optional(&self.reader)
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
             WHERE user_id = ? AND id < coalesce(?, 9223372036854775807)
             ORDER BY id DESC LIMIT ?"
        );
        let rows: Vec<CreditEntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.to_string())
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows::credit_entries(rows)
    }

    async fn grant_credits(
        &self,
        user: UserId,
        amount: u32,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let granted = grant_in(&mut tx, user, amount, reason).await?;
        tx.commit().await?;
        Ok(granted)
    }
}
