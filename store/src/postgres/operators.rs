use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{BY_OWNER, CLAIM_CAPPED_SQL, PgStore, error_entry, secs};
use crate::{
    ClaimedJob, JobRecord, JobState, StoreError,
    operators::{
        FinishedCount, JobFilter, LiveCount, OperatorWrites, Operators, QueueSettings, Touched,
        WINDOWS,
    },
    rows::{self, ClaimRow, JOB_COLUMNS, JobRow},
};

fn placeholder(i: usize) -> String {
    format!("${i}")
}

fn uuid(p: String) -> String {
    format!("{p}::uuid")
}

/// Binds the text values of [`JobFilter::conditions`], in order.
fn bind_all<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    binds: &'q [String],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    for b in binds {
        query = query.bind(b);
    }
    query
}

fn touched(rows: Vec<(Uuid, String, bool)>) -> Vec<Touched> {
    rows.into_iter()
        .map(|(id, queue, owned)| Touched { id, queue, owned })
        .collect()
}

const WAITING: &str = "('available', 'scheduled', 'retryable')";

#[async_trait]
impl Operators for PgStore {
    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let rows: Vec<(String, bool, Option<i32>)> =
            sqlx::query_as("SELECT name, paused, concurrency_limit FROM queues ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, paused, limit)| QueueSettings {
                name,
                paused,
                concurrency_limit: limit.map(|l| l as u32),
            })
            .collect())
    }

    async fn set_concurrency_limit(
        &self,
        queue: &str,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO queues (name, concurrency_limit) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET concurrency_limit = $2, updated_at = now()",
        )
        .bind(queue)
        .bind(limit.map(|l| l.min(i32::MAX as u32) as i32))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_counts(&self, now: DateTime<Utc>) -> Result<Vec<LiveCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n,
                    min(run_at) FILTER (WHERE run_at <= $1
                        AND state IN ('available', 'scheduled', 'retryable')) AS oldest
             FROM jobs GROUP BY queue, state",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LiveCount {
                    queue: row.try_get("queue")?,
                    state: row.try_get("state")?,
                    count: row.try_get("n")?,
                    oldest_due_at: row.try_get("oldest")?,
                })
            })
            .collect()
    }

    async fn failed_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT queue, count(*) FROM finished_jobs WHERE state = 'failed' GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn finished_counts(&self, now: DateTime<Utc>) -> Result<Vec<FinishedCount>, StoreError> {
        let [a, b, c] = WINDOWS.map(|m| now - chrono::TimeDelta::minutes(i64::from(m)));
        let rows = sqlx::query(
            "SELECT queue, state,
                    count(*) FILTER (WHERE finished_at > $1) AS w0,
                    count(*) FILTER (WHERE finished_at > $2) AS w1,
                    count(*) AS w2
             FROM finished_jobs WHERE finished_at > $3
             GROUP BY queue, state",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .fetch_all(&self.pool)
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
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (cond, binds) = filter.conditions(1, placeholder, uuid);
        let n = binds.len();
        let cursor = if before.is_some() {
            format!(" AND id < ${}", n + 2)
        } else {
            String::new()
        };
        let limit_at = n + 1;
        // Each table's newest first through its id index, then merged; a
        // state names one table.
        let from = |table: &str| {
            format!(
                "(SELECT {JOB_COLUMNS} FROM {table} WHERE true{cond}{cursor}
                  ORDER BY id DESC LIMIT ${limit_at})"
            )
        };
        let sql = match filter.state {
            Some(s) if s.is_final() => from("finished_jobs"),
            Some(_) => from("jobs"),
            None => format!(
                "{} UNION ALL {} ORDER BY id DESC LIMIT ${limit_at}",
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
            query = query.bind(before);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows::jobs(rows)
    }
}

#[async_trait]
impl OperatorWrites for PgStore {
    async fn retry_batch(
        &self,
        filter: &JobFilter,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        // Waiting jobs: due now.
        let (cond, binds) = filter.conditions(2, placeholder, uuid);
        let due = format!(
            "UPDATE jobs SET state = 'available', run_at = now(), updated_at = now()
             WHERE id IN (SELECT id FROM jobs WHERE state IN ('scheduled', 'retryable'){cond}
                          ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
               AND state IN ('scheduled', 'retryable')
             RETURNING id, queue, owner IS NOT NULL"
        );
        let mut done = bind_all(
            sqlx::query_as::<_, (Uuid, String, bool)>(sqlx::AssertSqlSafe(due))
                .bind(i64::from(limit)),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?;
        let rest = limit as usize - done.len().min(limit as usize);
        if rest == 0 {
            return Ok(touched(done));
        }
        let (cond, binds) = filter.conditions(3, placeholder, uuid);
        // Ended jobs: back into `jobs`, one statement (a row another
        // retry moved first is deleted once, so inserted once).
        let insert = rows::move_unfinished(
            &[
                ("state", "'available'"),
                ("stage", "NULL"),
                ("progress", "0"),
                ("max_attempts", "greatest(max_attempts, attempt + 1)"),
                ("run_at", "now()"),
                ("cancel_requested", "false"),
                ("result", "NULL"),
                ("started_at", "NULL"),
                ("finished_at", "NULL"),
                ("updated_at", "now()"),
                ("credits", "0"),
            ],
            "moved",
        );
        let back = format!(
            "WITH picked AS ({}),
             moved AS (
                 DELETE FROM finished_jobs f USING picked
                 WHERE f.id = picked.id AND f.finished_at = picked.finished_at
                 RETURNING f.*)
             {insert} RETURNING id, queue, owner IS NOT NULL",
            crate::operators::retryable_ended(&format!(
                "SELECT id, finished_at, kind, owner FROM finished_jobs
                 WHERE state IN ('failed', 'cancelled') AND finished_at <= $2{cond}
                 ORDER BY id LIMIT $1"
            ))
        );
        let moved = bind_all(
            sqlx::query_as::<_, (Uuid, String, bool)>(sqlx::AssertSqlSafe(back))
                .bind(rest as i64)
                .bind(ended_before),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?;
        done.extend(moved);
        Ok(touched(done))
    }

    async fn end_waiting_batch(
        &self,
        filter: &JobFilter,
        state: JobState,
        reason: &str,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        let (cond, binds) = filter.conditions(4, placeholder, uuid);
        let code = if state == JobState::Failed {
            "'discarded'"
        } else {
            "'cancelled'"
        };
        let error = error_entry(code, "$3::text", "true");
        let insert = rows::move_finished(
            &[
                ("state", "$2::text"),
                ("errors", &error),
                ("cancel_requested", "$2::text = 'cancelled'"),
                ("finished_at", "now()"),
                ("updated_at", "now()"),
            ],
            "done",
        );
        // Locked in id order, skipping rows a claim holds (they are
        // running, so no longer waiting). Moved in owner order, as every
        // ending of several jobs is (see `BY_OWNER`).
        let sql = format!(
            "WITH picked AS (
                 SELECT id FROM jobs WHERE state IN {WAITING}{cond}
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
             done AS (
                 DELETE FROM jobs USING picked
                 WHERE jobs.id = picked.id AND jobs.state IN {WAITING}
                 RETURNING jobs.*)
             {insert} {BY_OWNER} RETURNING id, queue, owner IS NOT NULL"
        );
        let rows = bind_all(
            sqlx::query_as::<_, (Uuid, String, bool)>(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(limit))
                .bind(state.as_str())
                .bind(reason),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(touched(rows))
    }

    async fn request_cancel_batch(
        &self,
        filter: &JobFilter,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError> {
        let (cond, binds) = filter.conditions(2, placeholder, uuid);
        let sql = format!(
            "UPDATE jobs SET cancel_requested = true, updated_at = now()
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND NOT cancel_requested{cond}
                          ORDER BY id LIMIT $1)
               AND state = 'running' AND NOT cancel_requested
             RETURNING id, queue, owner IS NOT NULL"
        );
        let rows = bind_all(
            sqlx::query_as::<_, (Uuid, String, bool)>(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(limit)),
            &binds,
        )
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The settings rows are locked first, in name order: another
        // process's claim of these queues waits here, and the count below
        // (a new snapshot, read after the lock) sees its claims committed.
        let limits: Vec<(String, i32)> = sqlx::query_as(
            "SELECT name, concurrency_limit FROM queues
             WHERE name = ANY($1) AND concurrency_limit IS NOT NULL AND NOT paused
             ORDER BY name FOR UPDATE",
        )
        .bind(queues)
        .fetch_all(&mut *tx)
        .await?;
        if limits.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let names: Vec<&str> = limits.iter().map(|(n, _)| n.as_str()).collect();
        let running: Vec<(String, i64)> = sqlx::query_as(
            // Leased = running (constraint `jobs_lease_while_running`),
            // and the lease index holds the running jobs only.
            "SELECT queue, count(*) FROM jobs
             WHERE lease_expires_at IS NOT NULL AND queue = ANY($1) GROUP BY queue",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let (mut free_names, mut caps) = (Vec::new(), Vec::new());
        for (name, max) in &limits {
            let busy = running
                .iter()
                .find(|(q, _)| q == name)
                .map_or(0, |(_, n)| *n);
            let free = (i64::from(*max) - busy).min(i64::from(limit));
            if free > 0 {
                free_names.push(name.clone());
                caps.push(free);
            }
        }
        if free_names.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_CAPPED_SQL.as_str()))
            .bind(&free_names)
            .bind(i64::from(limit))
            .bind(worker)
            .bind(secs(lease))
            .bind(&caps)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows::claimed(rows)
    }
}
