use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{SqliteStore, ms};
use crate::{
    StoreError,
    codec::Time,
    workers::{Beat, NewWorker, WorkerId, WorkerRow, Workers},
};

#[async_trait]
impl Workers for SqliteStore {
    async fn register_worker(&self, w: &NewWorker, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, version, queues, concurrency, started_at,
                                  heartbeat_at, lost_after_ms, stalled_after_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                 queues = excluded.queues, concurrency = excluded.concurrency,
                 lost_after_ms = excluded.lost_after_ms,
                 stalled_after_ms = excluded.stalled_after_ms, stopping = 0",
        )
        .bind(&w.id.0)
        .bind(&w.host)
        .bind(i64::from(w.pid))
        .bind(&w.version)
        .bind(serde_json::json!(w.queues).to_string())
        .bind(i64::from(w.concurrency))
        .bind(Time(w.started_at))
        .bind(Time(at))
        .bind(ms(w.lost_after))
        .bind(ms(w.stalled_after))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn worker_heartbeat(&self, id: &WorkerId, beat: Beat) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE workers SET heartbeat_at = ?2, running = ?3, last_claim_at = ?4,
                                stopping = ?5
             WHERE id = ?1",
        )
        .bind(&id.0)
        .bind(Time(beat.at))
        .bind(i64::from(beat.running))
        .bind(beat.last_claim_at.map(Time))
        .bind(beat.stopping)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn deregister_worker(&self, id: &WorkerId) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM workers WHERE id = ?1")
            .bind(&id.0)
            .execute(&self.writer)
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
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let millis = |c: &str| -> Result<std::time::Duration, StoreError> {
                    let v: i64 = r.try_get(c)?;
                    Ok(std::time::Duration::from_millis(v.max(0) as u64))
                };
                let count = |c: &str| -> Result<u32, StoreError> {
                    let v: i64 = r.try_get(c)?;
                    Ok(v.clamp(0, i64::from(u32::MAX)) as u32)
                };
                let queues: String = r.try_get("queues")?;
                let queues = serde_json::from_str(&queues)
                    .map_err(|e| StoreError::Corrupt(format!("workers.queues: {e}")))?;
                let last: Option<Time> = r.try_get("last_claim_at")?;
                Ok(WorkerRow {
                    worker: NewWorker {
                        id: WorkerId(r.try_get("id")?),
                        host: r.try_get("host")?,
                        pid: count("pid")?,
                        version: r.try_get("version")?,
                        queues,
                        concurrency: count("concurrency")?,
                        started_at: r.try_get::<Time, _>("started_at")?.0,
                        lost_after: millis("lost_after_ms")?,
                        stalled_after: millis("stalled_after_ms")?,
                    },
                    heartbeat_at: r.try_get::<Time, _>("heartbeat_at")?.0,
                    running: count("running")?,
                    last_claim_at: last.map(|t| t.0),
                    stopping: r.try_get("stopping")?,
                })
            })
            .collect()
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM workers WHERE heartbeat_at + lost_after_ms < ?1")
                .bind(Time(before))
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }
}
