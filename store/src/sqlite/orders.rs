use async_trait::async_trait;
use kiln_jobs::{OrderId, UserId};

use super::{SqliteStore, now_ms};
use crate::{
    StoreError,
    orders::{NewOrder, Order, Orders, PaymentNotification, PaymentOutcome, purchase_reason},
    rows::{self, ORDER_COLUMNS, OrderRow},
};

#[async_trait]
impl Orders for SqliteStore {
    async fn open_order(&self, order: &NewOrder) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payment_orders (id, user_id, provider, pack, credits, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(order.id.to_string())
        .bind(order.user.to_string())
        .bind(&order.provider)
        .bind(&order.pack)
        .bind(i64::from(order.credits))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn set_order_transaction(
        &self,
        order: OrderId,
        transaction_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE payment_orders SET transaction_id = ? WHERE id = ?")
            .bind(transaction_id)
            .bind(order.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn order(&self, order: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM payment_orders WHERE id = ?");
        let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.map(Order::try_from).transpose()
    }

    async fn orders(&self, user: UserId, limit: u32) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE user_id = ?
             ORDER BY created_at DESC, id LIMIT ?"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows::orders(rows)
    }

    async fn apply_payment(&self, n: &PaymentNotification) -> Result<PaymentOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO payment_events (provider, event_id, event_type, order_id, received_at)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&n.provider)
        .bind(&n.event_id)
        .bind(&n.event_type)
        .bind(n.payment.as_ref().map(|p| p.order.to_string()))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(PaymentOutcome::Duplicate);
        }
        let Some(p) = &n.payment else {
            tx.commit().await?;
            return Ok(PaymentOutcome::Ignored);
        };
        let (order, account) = (p.order.to_string(), p.account.to_string());
        let paid: Option<(i64, String)> = sqlx::query_as(
            "UPDATE payment_orders
             SET status = 'paid', transaction_id = ?, amount = ?, currency = ?, paid_at = ?
             WHERE id = ? AND user_id = ? AND status = 'open'
             RETURNING credits, pack",
        )
        .bind(&p.transaction_id)
        .bind(p.amount)
        .bind(&p.currency)
        .bind(p.paid_at.timestamp_millis())
        .bind(&order)
        .bind(&account)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match paid {
            Some((credits, pack)) => {
                let entry = sqlx::query(
                    "INSERT INTO credit_entries (user_id, kind, amount, reason, order_id, created_at)
                     VALUES (?, 'purchase', ?, ?, ?, ?)
                     ON CONFLICT (order_id, kind) WHERE order_id IS NOT NULL DO NOTHING",
                )
                .bind(&account)
                .bind(credits)
                .bind(purchase_reason(&pack))
                .bind(&order)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if entry.rows_affected() == 1 {
                    sqlx::query(
                        "UPDATE credit_accounts SET balance = balance + ?, updated_at = ?
                         WHERE user_id = ?",
                    )
                    .bind(credits)
                    .bind(now)
                    .bind(&account)
                    .execute(&mut *tx)
                    .await?;
                }
                PaymentOutcome::Granted {
                    user: p.account,
                    credits: u32::try_from(credits).unwrap_or(u32::MAX),
                }
            }
            None => {
                let status: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM payment_orders WHERE id = ? AND user_id = ?",
                )
                .bind(&order)
                .bind(&account)
                .fetch_optional(&mut *tx)
                .await?;
                match status.as_deref() {
                    Some("paid") => PaymentOutcome::AlreadyPaid,
                    _ => PaymentOutcome::UnknownOrder,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
