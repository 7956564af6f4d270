use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SqliteStore, now_ms};
use crate::{
    NewJob, StoreError,
    codec::{Id, Time},
    schedules::{Decision, PlanLock, PlanRecord, Schedules, SlotFired, decide, slot_ms},
};

impl SqliteStore {
    pub(super) async fn fire_slot_in_db(
        &self,
        plan: &str,
        slot: DateTime<Utc>,
        job: NewJob,
    ) -> Result<SlotFired, StoreError> {
        let slot = slot_ms(slot);
        // One writer connection: replicas in other processes wait for the file's
        // write lock, then find the slot handled.
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO cron_plans (plan, updated_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(plan)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let lock: PlanLock = sqlx::query_as(
            "SELECT c.last_slot, j.id AS running
             FROM cron_plans c LEFT JOIN jobs j ON j.id = c.last_job
             WHERE c.plan = ?1",
        )
        .bind(plan)
        .fetch_one(&mut *tx)
        .await?;
        let fired = match decide(&lock, slot) {
            Decision::Skip(SlotFired::AlreadyHandled) => return Ok(SlotFired::AlreadyHandled),
            Decision::Skip(skipped) => {
                sqlx::query(
                    "UPDATE cron_plans SET last_slot = ?2, updated_at = ?3 WHERE plan = ?1",
                )
                .bind(plan)
                .bind(Time(slot))
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                skipped
            }
            Decision::Fire => {
                let enqueued = SqliteStore::enqueue_in(&mut tx, job).await?;
                sqlx::query(
                    "UPDATE cron_plans SET last_slot = ?2, last_job = ?3, updated_at = ?4
                     WHERE plan = ?1",
                )
                .bind(plan)
                .bind(Time(slot))
                .bind(Id(enqueued.id))
                .bind(now_ms())
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
impl Schedules for SqliteStore {
    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let rows: Vec<(String, Option<Time>, Option<Id>)> =
            sqlx::query_as("SELECT plan, last_slot, last_job FROM cron_plans ORDER BY plan")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows.into_iter().map(crate::schedules::record).collect())
    }
}
