use async_trait::async_trait;
use kiln_jobs::{OrderId, UserId};

use super::PgStore;
use crate::{
    StoreError,
    orders::{NewOrder, Order, Orders, PaymentNotification, PaymentOutcome, purchase_reason},
    rows::{self, ORDER_COLUMNS, OrderRow},
};

#[async_trait]
impl Orders for PgStore {
    async fn open_order(&self, order: &NewOrder) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payment_orders (id, user_id, provider, pack, credits)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(order.id.0)
        .bind(order.user.0)
        .bind(&order.provider)
        .bind(&order.pack)
        .bind(i64::from(order.credits))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_order_transaction(
        &self,
        order: OrderId,
        transaction_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE payment_orders SET transaction_id = $2 WHERE id = $1")
            .bind(order.0)
            .bind(transaction_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn order(&self, order: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM payment_orders WHERE id = $1");
        let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(order.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Order::try_from).transpose()
    }

    async fn orders(&self, user: UserId, limit: u32) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE user_id = $1
             ORDER BY created_at DESC, id LIMIT $2"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.0)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows::orders(rows)
    }

    async fn apply_payment(&self, n: &PaymentNotification) -> Result<PaymentOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A redelivery waits here on the first delivery's row, then finds it.
        let fresh = sqlx::query(
            "INSERT INTO payment_events (provider, event_id, event_type, order_id)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&n.provider)
        .bind(&n.event_id)
        .bind(&n.event_type)
        .bind(n.payment.as_ref().map(|p| p.order.0))
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
        let paid: Option<(i64, String)> = sqlx::query_as(
            "UPDATE payment_orders
             SET status = 'paid', transaction_id = $3, amount = $4, currency = $5, paid_at = $6
             WHERE id = $1 AND user_id = $2 AND status = 'open'
             RETURNING credits, pack",
        )
        .bind(p.order.0)
        .bind(p.account.0)
        .bind(&p.transaction_id)
        .bind(p.amount)
        .bind(&p.currency)
        .bind(p.paid_at)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match paid {
            Some((credits, pack)) => {
                // The order's one purchase entry, and the balance with it.
                sqlx::query(
                    "WITH entry AS (
                         INSERT INTO credit_entries (user_id, kind, amount, reason, order_id)
                         VALUES ($1, 'purchase', $2, $3, $4)
                         ON CONFLICT (order_id, kind) WHERE order_id IS NOT NULL DO NOTHING
                         RETURNING amount)
                     UPDATE credit_accounts SET balance = balance + entry.amount, updated_at = now()
                     FROM entry WHERE user_id = $1",
                )
                .bind(p.account.0)
                .bind(credits)
                .bind(purchase_reason(&pack))
                .bind(p.order.0)
                .execute(&mut *tx)
                .await?;
                PaymentOutcome::Granted {
                    user: p.account,
                    credits: u32::try_from(credits).unwrap_or(u32::MAX),
                }
            }
            None => {
                let status: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM payment_orders WHERE id = $1 AND user_id = $2",
                )
                .bind(p.order.0)
                .bind(p.account.0)
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
