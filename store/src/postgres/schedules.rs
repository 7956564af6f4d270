use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgStore;
use crate::{
    NewJob, StoreError,
    codec::{Id, Time},
    schedules::{Decision, PlanLock, PlanRecord, Schedules, SlotFired, decide, slot_ms},
};

impl PgStore {
    pub(super) async fn fire_slot_in_db(
        &self,
        plan: &str,
        slot: DateTime<Utc>,
        job: NewJob,
    ) -> Result<SlotFired, StoreError> {
        let slot = slot_ms(slot);
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO cron_plans (plan) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(plan)
            .execute(&mut *tx)
            .await?;
        // Replicas wait here for each other; the second finds the slot handled.
        let lock: PlanLock = sqlx::query_as(
            "SELECT c.last_slot, j.id AS running
             FROM cron_plans c LEFT JOIN jobs j ON j.id = c.last_job
             WHERE c.plan = $1 FOR UPDATE OF c",
        )
        .bind(plan)
        .fetch_one(&mut *tx)
        .await?;
        let fired = match decide(&lock, slot) {
            Decision::Skip(SlotFired::AlreadyHandled) => return Ok(SlotFired::AlreadyHandled),
            Decision::Skip(skipped) => {
                sqlx::query(
                    "UPDATE cron_plans SET last_slot = $2, updated_at = now() WHERE plan = $1",
                )
                .bind(plan)
                .bind(Time(slot))
                .execute(&mut *tx)
                .await?;
                skipped
            }
            Decision::Fire => {
                let enqueued = PgStore::enqueue_in(&mut tx, job).await?;
                sqlx::query(
                    "UPDATE cron_plans SET last_slot = $2, last_job = $3, updated_at = now()
                     WHERE plan = $1",
                )
                .bind(plan)
                .bind(Time(slot))
                .bind(Id(enqueued.id))
                .execute(&mut *tx)
                .await?;
                if enqueued.created {
                    SlotFired::Fired(enqueued.id)
                } else {
                    SlotFired::AlreadyHandled
                }
            }
        };
        tx.commit().await?;
        Ok(fired)
    }
}

#[async_trait]
impl Schedules for PgStore {
    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let rows: Vec<(String, Option<Time>, Option<Id>)> =
            sqlx::query_as("SELECT plan, last_slot, last_job FROM cron_plans ORDER BY plan")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(crate::schedules::record).collect())
    }
}
