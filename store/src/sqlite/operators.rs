use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::{APPEND_ERROR, SqliteStore, ms, now_ms};
use crate::{
    ClaimedJob, JobRecord, JobState, StoreError,
    codec::{Id, Time},
    operators::{
        FinishedCount, JobFilter, LiveCount, OperatorWrites, Operators, QueueSettings, Touched,
        WINDOWS,
    },
    rows::{self, CLAIM_COLUMNS, ClaimRow, JOB_COLUMNS, JobRow},
};

fn placeholder(i: usize) -> String {
    format!("?{i}")
}

/// Ids are text on SQLite.
fn uuid(p: String) -> String {
    p
}

type Arguments = sqlx::sqlite::SqliteArguments;

fn bind_all<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::Sqlite, O, Arguments>,
    binds: &'q [String],
) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, O, Arguments> {
    for b in binds {
        query = query.bind(b);
    }
    query
}

fn touched(rows: Vec<(Id, String, bool)>) -> Vec<Touched> {
    rows.into_iter()
        .map(|(id, queue, owned)| Touched {
            id: id.0,
            queue,
            owned,
        })
        .collect()
}

fn ids_json(rows: &[(Id, String, bool)]) -> String {
    serde_json::json!(
        rows.iter()
            .map(|(id, _, _)| id.0.to_string())
            .collect::<Vec<_>>()
    )
    .to_string()
}

const WAITING: &str = "('available', 'scheduled', 'retryable')";

#[async_trait]
impl Operators for SqliteStore {
    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let rows: Vec<(String, bool, Option<i64>)> =
            sqlx::query_as("SELECT name, paused, concurrency_limit FROM queues ORDER BY name")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, paused, limit)| QueueSettings {
                name,
                paused,
                concurrency_limit: limit.map(|l| l.clamp(0, i64::from(u32::MAX)) as u32),
            })
            .collect())
    }

    async fn set_concurrency_limit(
        &self,
        queue: &str,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO queues (name, concurrency_limit, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET concurrency_limit = ?2, updated_at = ?3",
        )
        .bind(queue)
        .bind(limit.map(i64::from))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn live_counts(&self, now: DateTime<Utc>) -> Result<Vec<LiveCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n,
                    min(CASE WHEN run_at <= ?1 AND state IN ('available', 'scheduled', 'retryable')
                             THEN run_at END) AS oldest
             FROM jobs GROUP BY queue, state",
        )
        .bind(now.timestamp_millis())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let oldest: Option<Time> = row.try_get("oldest")?;
                Ok(LiveCount {
                    queue: row.try_get("queue")?,
                    state: row.try_get("state")?,
                    count: row.try_get("n")?,
                    oldest_due_at: oldest.map(|t| t.0),
                })
            })
            .collect()
    }

    async fn failed_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT queue, count(*) FROM finished_jobs WHERE state = 'failed' GROUP BY queue",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    async fn finished_counts(&self, now: DateTime<Utc>) -> Result<Vec<FinishedCount>, StoreError> {
        let [a, b, c] = WINDOWS.map(|m| now.timestamp_millis() - i64::from(m) * 60_000);
        let rows = sqlx::query(
            "SELECT queue, state,
                    sum(finished_at > ?1) AS w0, sum(finished_at > ?2) AS w1, count(*) AS w2
             FROM finished_jobs WHERE finished_at > ?3
             GROUP BY queue, state",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(FinishedCount {
                    queue: row.try_get("queue")?,
                    state: row.try_get("state")?,
                    counts: [row.try_get("w0")?, row.try_get("w1")?, row.try_get("w2")?],
                })
            })
            .collect()
    }

    async fn operator_jobs(
        &self,
        filter: &JobFilter,
        before: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (cond, binds) = filter.conditions(1, placeholder, uuid);
        let n = binds.len();
        let cursor = if before.is_some() {
            format!(" AND id < ?{}", n + 2)
        } else {
            String::new()
        };
        let limit_at = n + 1;
        let from = |table: &str| {
            format!(
                "SELECT * FROM (SELECT {JOB_COLUMNS} FROM {table} WHERE 1{cond}{cursor}
                                ORDER BY id DESC LIMIT ?{limit_at})"
            )
        };
        let sql = match filter.state {
            Some(s) if s.is_final() => from("finished_jobs"),
            Some(_) => from("jobs"),
            None => format!(
                "{} UNION ALL {} ORDER BY id DESC LIMIT ?{limit_at}",
                from("jobs"),
                from("finished_jobs")
            ),
        };
        let mut query = bind_all(
            sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql)),
            &binds,
        )
        .bind(i64::from(limit));
        if let Some(before) = before {
            query = query.bind(before.to_string());
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows::jobs(rows)
    }
}

/// Claims up to `n` due jobs of one queue, inside the caller's transaction.
async fn claim_one_queue(
    tx: &mut SqliteConnection,
    worker: &str,
    queue: &str,
    n: i64,
    lease: Duration,
) -> Result<Vec<ClaimRow>, StoreError> {
    let now = now_ms();
    let sql = format!(
        "UPDATE jobs
         SET state = 'running', attempt = attempt + 1, token = token + 1,
             lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, updated_at = ?3
         WHERE id IN (
             SELECT id FROM jobs
             WHERE queue = ?5 AND state IN {WAITING} AND run_at <= ?3
             ORDER BY priority DESC, fair_seq, run_at, id
             LIMIT ?4)
         RETURNING {CLAIM_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, ClaimRow>(sqlx::AssertSqlSafe(sql))
        .bind(worker)
        .bind(now + ms(lease))
        .bind(now)
        .bind(n)
        .bind(queue)
        .fetch_all(&mut *tx)
        .await?)
}

#[async_trait]
impl OperatorWrites for SqliteStore {
    async fn retry_batch(
        &self,
        filter: &JobFilter,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        // Waiting jobs: due now.
        let (cond, binds) = filter.conditions(3, placeholder, uuid);
        let due = format!(
            "UPDATE jobs SET state = 'available', run_at = ?1, updated_at = ?1
             WHERE id IN (SELECT id FROM jobs WHERE state IN ('scheduled', 'retryable'){cond}
                          ORDER BY id LIMIT ?2)
             RETURNING id, queue, owner IS NOT NULL"
        );
        let mut done = bind_all(
            sqlx::query_as::<_, (Id, String, bool)>(sqlx::AssertSqlSafe(due))
                .bind(now)
                .bind(i64::from(limit)),
            &binds,
        )
        .fetch_all(&mut *tx)
        .await?;
        let rest = limit as usize - done.len().min(limit as usize);
        if rest > 0 {
            // Ended jobs: copied back into `jobs`, then deleted from
            // `finished_jobs`, in this one transaction.
            let pick = format!(
                "SELECT json_group_array(id) FROM ({})",
                crate::operators::retryable_ended(&format!(
                    "SELECT id, finished_at, kind, owner FROM finished_jobs
                     WHERE state IN ('failed', 'cancelled') AND finished_at <= ?1{cond}
                     ORDER BY id LIMIT ?2"
                ))
            );
            let picked: String = {
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(pick))
                    .bind(ended_before.timestamp_millis())
                    .bind(rest as i64);
                for b in &binds {
                    q = q.bind(b);
                }
                q.fetch_one(&mut *tx).await?
            };
            let insert = rows::move_unfinished(
                &[
                    ("state", "'available'"),
                    ("stage", "NULL"),
                    ("progress", "0"),
                    ("max_attempts", "max(max_attempts, attempt + 1)"),
                    ("run_at", "?1"),
                    ("cancel_requested", "0"),
                    ("result", "NULL"),
                    ("started_at", "NULL"),
                    ("finished_at", "NULL"),
                    ("updated_at", "?1"),
                    ("credits", "0"),
                ],
                "finished_jobs WHERE id IN (SELECT value FROM json_each(?2))",
            ) + " RETURNING id, queue, owner IS NOT NULL";
            let moved: Vec<(Id, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(insert))
                .bind(now)
                .bind(&picked)
                .fetch_all(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM finished_jobs WHERE id IN (SELECT value FROM json_each(?))")
                .bind(&picked)
                .execute(&mut *tx)
                .await?;
            done.extend(moved);
        }
        tx.commit().await?;
        Ok(touched(done))
    }

    async fn end_waiting_batch(
        &self,
        filter: &JobFilter,
        state: JobState,
        reason: &str,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        let (cond, binds) = filter.conditions(7, placeholder, uuid);
        let code = if state == JobState::Failed {
            "discarded"
        } else {
            "cancelled"
        };
        let insert = rows::move_finished(
            &[
                ("state", "?6"),
                ("errors", APPEND_ERROR),
                ("cancel_requested", "?6 = 'cancelled'"),
                ("finished_at", "?1"),
                ("updated_at", "?1"),
            ],
            &format!(
                "jobs WHERE id IN (SELECT id FROM jobs WHERE state IN {WAITING}{cond}
                                   ORDER BY id LIMIT ?5)"
            ),
        ) + " RETURNING id, queue, owner IS NOT NULL";
        let mut tx = self.writer.begin().await?;
        let moved = bind_all(
            sqlx::query_as::<_, (Id, String, bool)>(sqlx::AssertSqlSafe(insert))
                .bind(now_ms())
                .bind(code)
                .bind(reason)
                .bind("true")
                .bind(i64::from(limit))
                .bind(state.as_str()),
            &binds,
        )
        .fetch_all(&mut *tx)
        .await?;
        if !moved.is_empty() {
            sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
                .bind(ids_json(&moved))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(touched(moved))
    }

    async fn request_cancel_batch(
        &self,
        filter: &JobFilter,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        let (cond, binds) = filter.conditions(3, placeholder, uuid);
        let sql = format!(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND NOT cancel_requested{cond}
                          ORDER BY id LIMIT ?2)
             RETURNING id, queue, owner IS NOT NULL"
        );
        let rows = bind_all(
            sqlx::query_as::<_, (Id, String, bool)>(sqlx::AssertSqlSafe(sql))
                .bind(now_ms())
                .bind(i64::from(limit)),
            &binds,
        )
        .fetch_all(&self.writer)
        .await?;
        Ok(touched(rows))
    }

    async fn claim_capped(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // One writer: the count and the claims below are one step.
        let mut tx = self.writer.begin().await?;
        let free: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, concurrency_limit
                          - (SELECT count(*) FROM jobs
                             WHERE jobs.queue = queues.name AND jobs.state = 'running')
             FROM queues
             WHERE name IN (SELECT value FROM json_each(?1))
               AND concurrency_limit IS NOT NULL AND NOT paused
             ORDER BY name",
        )
        .bind(serde_json::json!(queues).to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = Vec::new();
        for (queue, free) in free {
            let n = free.min(i64::from(limit) - rows.len() as i64);
            if n <= 0 {
                continue;
            }
            rows.extend(claim_one_queue(&mut tx, worker, &queue, n, lease).await?);
        }
        tx.commit().await?;
        rows::claimed(rows)
    }
}
