use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PgStore;
use crate::{
    StoreError,
    codec::Time,
    workers::{Beat, NewWorker, WorkerId, WorkerRow, Workers},
};

fn millis(d: std::time::Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[async_trait]
impl Workers for PgStore {
    async fn register_worker(&self, w: &NewWorker, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, version, queues, concurrency, started_at,
                                  heartbeat_at, lost_after_ms, stalled_after_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at,
                 queues = EXCLUDED.queues, concurrency = EXCLUDED.concurrency,
                 lost_after_ms = EXCLUDED.lost_after_ms,
                 stalled_after_ms = EXCLUDED.stalled_after_ms, stopping = false",
        )
        .bind(&w.id.0)
        .bind(&w.host)
        .bind(i32::try_from(w.pid).unwrap_or(i32::MAX))
        .bind(&w.version)
        .bind(&w.queues)
        .bind(i32::try_from(w.concurrency).unwrap_or(i32::MAX))
        .bind(Time(w.started_at))
        .bind(Time(at))
        .bind(millis(w.lost_after))
        .bind(millis(w.stalled_after))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn worker_heartbeat(&self, id: &WorkerId, beat: Beat) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE workers SET heartbeat_at = $2, running = $3, last_claim_at = $4,
                                stopping = $5
             WHERE id = $1",
        )
        .bind(&id.0)
        .bind(Time(beat.at))
        .bind(i32::try_from(beat.running).unwrap_or(i32::MAX))
        .bind(beat.last_claim_at.map(Time))
        .bind(beat.stopping)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn deregister_worker(&self, id: &WorkerId) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&id.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn worker_rows(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, host, pid, version, queues, concurrency, started_at, heartbeat_at,
                    running, last_claim_at, stopping, lost_after_ms, stalled_after_ms
             FROM workers ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ms = |c: &str| -> Result<std::time::Duration, StoreError> {
                    let v: i64 = r.try_get(c)?;
                    Ok(std::time::Duration::from_millis(v.max(0) as u64))
                };
                let last: Option<Time> = r.try_get("last_claim_at")?;
                Ok(WorkerRow {
                    worker: NewWorker {
                        id: WorkerId(r.try_get("id")?),
                        host: r.try_get("host")?,
                        pid: r.try_get::<i32, _>("pid")?.max(0) as u32,
                        version: r.try_get("version")?,
                        queues: r.try_get("queues")?,
                        concurrency: r.try_get::<i32, _>("concurrency")?.max(0) as u32,
                        started_at: r.try_get::<Time, _>("started_at")?.0,
                        lost_after: ms("lost_after_ms")?,
                        stalled_after: ms("stalled_after_ms")?,
                    },
                    heartbeat_at: r.try_get::<Time, _>("heartbeat_at")?.0,
                    running: r.try_get::<i32, _>("running")?.max(0) as u32,
                    last_claim_at: last.map(|t| t.0),
                    stopping: r.try_get("stopping")?,
                })
            })
            .collect()
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM workers
             WHERE heartbeat_at + lost_after_ms * interval '1 millisecond' < $1",
        )
        .bind(Time(before))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
