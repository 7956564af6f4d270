//! The queue on SQLite, for the embedded single-process default: WAL,
//! `synchronous=NORMAL`, one writer connection (SQLite has one writer at a
//! time anyway; a single connection never meets `SQLITE_BUSY` from itself)
//! and a small pool of readers. Times are unix milliseconds.

use std::{path::Path, str::FromStr, sync::LazyLock, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use kiln_jobs::UserId;
use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use crate::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, Failure, JobRecord, JobState, JobWrites,
    Lease, NewJob, Queue, QueueStat, Rescued, StoreError, StoreEvent,
    codec::Id,
    generations::{BatchEnqueued, GenerationEnqueued, NewGeneration, NewGenerationBatch},
    rescue::rescue_decision,
    rows::{self, CLAIM_COLUMNS, ClaimRow, JOB_COLUMNS, JobRow},
};

mod access_log;
mod accounts;
mod credits;
mod deletion;
mod export;
mod generations;
mod notices;
mod operator_exports;
mod operators;
mod orders;
mod retention;
mod schedules;
mod subject_requests;
mod webhooks;
mod workers;

use crate::generations::NewGenerationRow;
use generations::{existing_batch, insert_generations};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` (`sqlite:path`).
    pub async fn open(url: &str, readers: u32) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = Path::new(options.get_filename()).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create {}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A write that fails for a full disk (or an I/O error) makes
            // SQLite roll its transaction back by itself; sqlx's ROLLBACK
            // then fails and it still counts the transaction open, so its
            // next BEGIN would be a SAVEPOINT inside a transaction nobody
            // commits: every later write seen by this connection only, and
            // lost with it. Such a connection is closed, not reused.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    let open = sqlx::Connection::is_in_transaction(&*conn);
                    if open {
                        tracing::warn!(
                            "the SQLite writer was left in a transaction SQLite had already \
                             rolled back (a failed write); reopening it"
                        );
                    }
                    Ok(!open)
                })
            })
            .connect_with(options.clone())
            .await?;
        // Read-only, so a write sent to a reader by mistake fails at once
        // instead of contending with the writer for the lock.
        let reader = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// The one connection that writes; transactional enqueues go through
    /// `store.writer().begin()`.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Inserts a job inside the caller's transaction. Call
    /// [`Store::jobs_available`](crate::Store::jobs_available) after the
    /// commit to wake this process's workers.
    pub async fn enqueue_in(
        conn: &mut SqliteConnection,
        job: NewJob,
    ) -> Result<Enqueued, StoreError> {
        let now = now_ms();
        let fair_seq = fair_seq(&mut *conn, job.owner).await?;
        Self::insert(conn, job, fair_seq, now).await
    }

    /// Inserts many jobs inside the caller's transaction. A job whose
    /// idempotency key exists already is skipped. Returns, for each
    /// inserted job, its position in `jobs` and its id.
    pub async fn enqueue_many_in(
        tx: &mut SqliteConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<(usize, Uuid)>, StoreError> {
        let now = now_ms();
        let mut next_seq: std::collections::HashMap<Option<UserId>, i64> = Default::default();
        let mut ids = Vec::with_capacity(jobs.len());
        let mut unkeyed = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let seq = match next_seq.get_mut(&job.owner) {
                Some(s) => s,
                None => {
                    let first = fair_seq(&mut *tx, job.owner).await?;
                    next_seq.entry(job.owner).or_insert(first)
                }
            };
            let this_seq = *seq;
            if job.owner.is_some() {
                *seq += 1;
            }
            if job.idempotency_key.is_some() || job.webhook.is_some() {
                let enqueued = Self::insert(&mut *tx, job, this_seq, now).await?;
                if enqueued.created {
                    ids.push((i, enqueued.id));
                }
                continue;
            }
            // Unkeyed jobs without a webhook, the common case, go in below
            // in one statement.
            let id = Uuid::now_v7();
            let run_at = job.run_at.map_or(now, |t| t.timestamp_millis());
            let state = if run_at > now {
                "scheduled"
            } else {
                "available"
            };
            unkeyed.push(serde_json::json!([
                id.to_string(),
                job.kind,
                job.queue,
                rows::owner_text(job.owner),
                job.payload.to_string(),
                job.schema_version,
                state,
                job.priority,
                this_seq,
                job.max_attempts,
                run_at,
                job.credits,
                job.parent_id.map(|p| p.to_string()),
                job.follow_up_credits,
                job.traceparent,
            ]));
            ids.push((i, id));
        }
        // The jobs without a key, which need no conflict check, in one
        // statement: one round trip to SQLite's thread instead of one per
        // job.
        if !unkeyed.is_empty() {
            sqlx::query(
                "INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state,
                                   priority, fair_seq, max_attempts, run_at, credits,
                                   parent_id, follow_up_credits, traceparent, created_at,
                                   updated_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                        value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                        value ->> 10, value ->> 11, value ->> 12, value ->> 13, value ->> 14,
                        ?2, ?2
                 FROM json_each(?1)",
            )
            .bind(serde_json::Value::Array(unkeyed).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        ids.sort_by_key(|(i, _)| *i);
        Ok(ids)
    }

    async fn insert(
        conn: &mut SqliteConnection,
        job: NewJob,
        fair_seq: i64,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        let id = Uuid::now_v7();
        let run_at = job.run_at.map_or(now, |t| t.timestamp_millis());
        let state = if run_at > now {
            "scheduled"
        } else {
            "available"
        };
        if let Some(key) = &job.idempotency_key {
            let taken = sqlx::query(
                "INSERT INTO job_keys (owner, kind, idempotency_key, job_id, created_at)
                 VALUES (coalesce(?, ''), ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(rows::owner_text(job.owner))
            .bind(&job.kind)
            .bind(key)
            .bind(id.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if taken.rows_affected() == 0 {
                let existing: Id = sqlx::query_scalar(
                    "SELECT job_id FROM job_keys
                     WHERE owner = coalesce(?, '') AND kind = ? AND idempotency_key = ?",
                )
                .bind(rows::owner_text(job.owner))
                .bind(&job.kind)
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
                return Ok(Enqueued {
                    id: existing.0,
                    created: false,
                });
            }
        }
        sqlx::query(
            "INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state, priority,
                               fair_seq, max_attempts, run_at, idempotency_key, credits,
                               parent_id, follow_up_credits, traceparent, created_at,
                               updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(rows::owner_text(job.owner))
        .bind(job.payload.to_string())
        .bind(job.schema_version)
        .bind(state)
        .bind(job.priority)
        .bind(fair_seq)
        .bind(job.max_attempts as i64)
        .bind(run_at)
        .bind(&job.idempotency_key)
        .bind(job.credits)
        .bind(job.parent_id.map(|p| p.to_string()))
        .bind(job.follow_up_credits)
        .bind(&job.traceparent)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if let Some(hook) = &job.webhook {
            sqlx::query(
                "INSERT INTO webhooks (job_id, owner, url, events, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id.to_string())
            .bind(rows::owner_text(job.owner))
            .bind(&hook.url)
            .bind(hook.events.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Enqueued { id, created: true })
    }
}

/// Moves the successes of `batch` (`[id, token, result]` each) to
/// `finished_jobs` inside the caller's transaction (move, then delete what
/// moved: one round trip to SQLite's thread per statement, not per job);
/// returns how many were still ours.
async fn complete_in(
    tx: &mut SqliteConnection,
    batch: Vec<serde_json::Value>,
) -> Result<u64, StoreError> {
    let moved: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(COMPLETE_SQL.as_str()))
        .bind(serde_json::Value::Array(batch).to_string())
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?;
    if !moved.is_empty() {
        sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
            .bind(serde_json::json!(moved).to_string())
            .execute(&mut *tx)
            .await?;
    }
    Ok(moved.len() as u64)
}

/// One generation and its job inside the caller's transaction, answered
/// as stored; or, if the idempotency key was taken, what became of it
/// (nothing was written then).
async fn create_generation_in(
    tx: &mut SqliteConnection,
    g: &NewGeneration,
) -> Result<GenerationEnqueued, StoreError> {
    let id = Uuid::now_v7();
    let mut job = g.input.job(id, g.owner)?;
    job.idempotency_key = g.idempotency_key.clone();
    let enqueued = SqliteStore::enqueue_in(&mut *tx, job).await?;
    if !enqueued.created {
        let hash: Option<String> =
            sqlx::query_scalar("SELECT request_hash FROM generations WHERE job_id = ?")
                .bind(enqueued.id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        return Ok(GenerationEnqueued::retried(
            enqueued.id,
            hash.as_deref(),
            &g.input.request_hash,
        ));
    }
    let row = NewGenerationRow {
        id,
        job_id: enqueued.id,
        input: &g.input,
    };
    insert_generations(&mut *tx, g.owner, None, &[row]).await?;
    // Read back inside the transaction (no round trip here), so the
    // caller need not.
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let stored: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Id(enqueued.id))
        .fetch_one(&mut *tx)
        .await?;
    Ok(GenerationEnqueued::Created {
        job: Box::new(stored.try_into()?),
    })
}

async fn fair_seq(conn: &mut SqliteConnection, owner: Option<UserId>) -> Result<i64, StoreError> {
    let Some(owner) = owner else { return Ok(0) };
    let owner = owner.to_string();
    // `jobs` holds only unfinished jobs; one probe of `jobs_owner_seq`.
    let last: Option<i64> = sqlx::query_scalar("SELECT max(fair_seq) FROM jobs WHERE owner = ?")
        .bind(&owner)
        .fetch_one(conn)
        .await?;
    Ok(last.unwrap_or(0) + 1)
}

/// Appends one entry to a job's error history (a JSON array in a text column).
const APPEND_ERROR: &str = "json_insert(errors, '$[#]', json_object(
    'attempt', attempt, 'at', strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch'),
    'code', ?2, 'message', ?3, 'permanent', json(?4)))";

/// Removes a job from `jobs` once its row was copied to `finished_jobs`
/// (`rows::move_finished`), in the same transaction: the single writer
/// makes the copy and the delete one step.
async fn delete_moved(tx: &mut SqliteConnection, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM jobs WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

static COMPLETE_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "'succeeded'"),
            ("result", "done_result"),
            ("progress", "100"),
            ("finished_at", "?2"),
            ("updated_at", "?2"),
        ],
        // ?1: a JSON array of [id, token, result] for each completion.
        "(SELECT j.*, c.value ->> 2 AS done_result
          FROM json_each(?1) c
          JOIN jobs j ON j.id = c.value ->> 0 AND j.token = c.value ->> 1
          WHERE j.state = 'running') AS jobs",
    ) + " RETURNING id"
});

/// The last attempt (or a permanent failure) ends the job; binds as the
/// retry's `UPDATE` in `fail`.
static FAIL_FINAL_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "'failed'"),
            ("errors", APPEND_ERROR),
            ("finished_at", "?1"),
            ("updated_at", "?1"),
        ],
        "jobs WHERE id = ?6 AND token = ?7 AND state = 'running'
             AND (?5 IS NULL OR attempt >= max_attempts)",
    )
});

static RELEASE_CANCELLED_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("attempt", "attempt - 1"),
            ("started_at", "NULL"),
            ("finished_at", "?1"),
            ("updated_at", "?1"),
        ],
        "jobs WHERE id = ?2 AND token = ?3 AND state = 'running' AND cancel_requested",
    )
});

static FINISH_CANCELLED_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("errors", APPEND_ERROR),
            ("finished_at", "?1"),
            ("updated_at", "?1"),
        ],
        "jobs WHERE id = ?5 AND token = ?6 AND state = 'running'",
    )
});

static CANCEL_WAITING_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("cancel_requested", "1"),
            ("finished_at", "?1"),
            ("updated_at", "?1"),
        ],
        "jobs WHERE id = ?2",
    )
});

static RESCUE_FINAL_SQL: LazyLock<String> = LazyLock::new(|| {
    rows::move_finished(
        &[
            ("state", "?5"),
            ("rescues", "rescues + 1"),
            ("errors", APPEND_ERROR),
            ("finished_at", "?1"),
            ("updated_at", "?1"),
        ],
        "jobs WHERE id = ?6",
    )
});

#[async_trait]
impl Queue for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    /// One plain `finished_jobs` table: nothing to prepare.
    async fn ensure_finished_partitions(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.reader)
        .await
        .unwrap_or_default();
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError> {
        let expires = now_ms() + ms(lease);
        let mut stop = Vec::new();
        let mut tx = self.writer.begin().await?;
        for l in leases {
            let cancel: Option<bool> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires_at = ?
                 WHERE id = ? AND token = ? AND state = 'running'
                 RETURNING cancel_requested",
            )
            .bind(expires)
            .bind(l.id.to_string())
            .bind(l.token)
            .fetch_optional(&mut *tx)
            .await?;
            if cancel != Some(false) {
                stop.push(*l);
            }
        }
        tx.commit().await?;
        Ok(stop)
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO queues (name, paused, updated_at) VALUES (?1, 1, ?2)
             ON CONFLICT (name) DO UPDATE SET paused = 1, updated_at = ?2",
        )
        .bind(queue)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT name FROM queues WHERE paused ORDER BY name")
                .fetch_all(&self.reader)
                .await?,
        )
    }

    async fn prune_finished(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM finished_jobs WHERE finished_at < ? ORDER BY finished_at LIMIT ?",
        )
        .bind(crate::codec::Time(before))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        // The ids travel as one JSON array, whatever their number.
        let ids = serde_json::json!(ids).to_string();
        for table in ["job_keys", "webhooks", "webhook_deliveries"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE job_id IN (SELECT value FROM json_each(?))"
            )))
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        let deleted =
            sqlx::query("DELETE FROM finished_jobs WHERE id IN (SELECT value FROM json_each(?))")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        // One statement, one snapshot: a job moving meanwhile is seen once;
        // `LIMIT 1` stops at the first table that has it.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1
             UNION ALL SELECT {JOB_COLUMNS} FROM finished_jobs WHERE id = ?1
             LIMIT 1"
        );
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(Id(id))
            .fetch_optional(&self.reader)
            .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn children_of(&self, parents: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM (
                 SELECT {JOB_COLUMNS} FROM jobs
                 WHERE parent_id IN (SELECT value FROM json_each(?1))
                 UNION ALL
                 SELECT {JOB_COLUMNS} FROM finished_jobs
                 WHERE parent_id IN (SELECT value FROM json_each(?1)))
             ORDER BY id"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(parents).to_string())
            .fetch_all(&self.reader)
            .await?;
        rows::jobs(rows)
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        // The ids travel as one JSON array, whatever their number.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?1))
             UNION ALL
             SELECT {JOB_COLUMNS} FROM finished_jobs WHERE id IN (SELECT value FROM json_each(?1))"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(ids).to_string())
            .fetch_all(&self.reader)
            .await?;
        rows::jobs(rows)
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n,
                    min(CASE WHEN run_at <= ?1
                              AND state IN ('available', 'scheduled', 'retryable')
                             THEN run_at END) AS oldest_due
             FROM (SELECT queue, state, run_at FROM jobs
                   UNION ALL SELECT queue, state, run_at FROM finished_jobs)
             GROUP BY queue, state ORDER BY queue, state",
        )
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let oldest: Option<i64> = row.try_get("oldest_due")?;
                Ok(QueueStat {
                    queue: row.try_get("queue")?,
                    state: row.try_get("state")?,
                    count: row.try_get("n")?,
                    oldest_due_age: oldest
                        .map(|t| Duration::from_millis(now.saturating_sub(t).max(0) as u64)),
                })
            })
            .collect()
    }
}

#[async_trait]
impl JobWrites for SqliteStore {
    async fn delete_account(
        &self,
        user: UserId,
        purge: NewJob,
    ) -> Result<Option<crate::deletion::AccountDeleted>, StoreError> {
        self.delete_account_in_db(user, purge).await
    }

    async fn fire_slot(
        &self,
        plan: &str,
        slot: chrono::DateTime<chrono::Utc>,
        job: NewJob,
    ) -> Result<crate::schedules::SlotFired, StoreError> {
        self.fire_slot_in_db(plan, slot, job).await
    }

    fn announce(&self, _: &[StoreEvent]) -> bool {
        false
    }

    /// One process: it hears itself.
    fn hears_every_process(&self) -> bool {
        true
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        let mut tx = self.writer.begin().await?;
        let enqueued = SqliteStore::enqueue_in(&mut tx, job).await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<(usize, Uuid)>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let ids = SqliteStore::enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // Paused queues are left out before the write lock is taken: the
        // per-row check below would otherwise walk every job of a paused
        // queue while holding it (seconds with a million queued), and
        // other processes' writes would starve behind repeated claims. The
        // check stays for a queue paused meanwhile.
        let paused = self.paused_queues().await?;
        let queues: Vec<&String> = queues.iter().filter(|q| !paused.contains(q)).collect();
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        // The same order as on Postgres: priority, then the owner
        // round-robin, then age, across all the worker's queues.
        // Numbered, because a bare `?` takes the next number after the
        // largest seen so far in the text, which would collide with ?4.
        let placeholders = (0..queues.len())
            .map(|i| format!("?{}", i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE jobs
             SET state = 'running', attempt = attempt + 1, token = token + 1,
                 lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, updated_at = ?3
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state IN ('available', 'scheduled', 'retryable')
                   AND run_at <= ?3
                   AND queue IN ({placeholders})
                   AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = jobs.queue
                                   AND (q.paused OR q.concurrency_limit IS NOT NULL))
                 ORDER BY priority DESC, fair_seq, run_at, id
                 LIMIT ?4)
             RETURNING {CLAIM_COLUMNS}"
        );
        let mut query = sqlx::query_as::<_, ClaimRow>(sqlx::AssertSqlSafe(sql))
            .bind(worker)
            .bind(now + ms(lease))
            .bind(now)
            .bind(i64::from(limit));
        for queue in queues {
            query = query.bind(queue);
        }
        let mut tx = self.writer.begin().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows::claimed(rows)
    }

    async fn complete(&self, done: &[Completion]) -> Result<u64, StoreError> {
        if done.is_empty() {
            return Ok(0);
        }
        // The whole batch in two statements (move, then delete what moved):
        // one round trip to SQLite's thread per statement, not per job.
        let batch: Vec<serde_json::Value> = done
            .iter()
            .map(|c| {
                serde_json::json!([c.lease.id.to_string(), c.lease.token, c.result.to_string()])
            })
            .collect();
        let mut tx = self.writer.begin().await?;
        let moved = complete_in(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn complete_then(
        &self,
        done: &Completion,
        follow_ups: Vec<NewJob>,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let batch = vec![serde_json::json!([
            done.lease.id.to_string(),
            done.lease.token,
            done.result.to_string()
        ])];
        let mut tx = self.writer.begin().await?;
        if complete_in(&mut tx, batch).await? == 0 {
            return Ok(None);
        }
        let (owner, cancel_requested): (Option<String>, bool) = sqlx::query_as(
            "SELECT owner, cancel_requested FROM finished_jobs WHERE id = ? AND state = 'succeeded'",
        )
        .bind(done.lease.id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        if cancel_requested {
            // Its owner cancelled it while it ran: what would follow, too.
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        }
        let jobs = crate::queue::as_follow_ups(follow_ups, done.lease.id, rows::owner(owner)?);
        let ids = Self::enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(Some(ids.into_iter().map(|(_, id)| id).collect()))
    }

    async fn fail(&self, lease: Lease, failure: Failure) -> Result<bool, StoreError> {
        let now = now_ms();
        let retry_at = failure.retry_in.map(|d| now + ms(d));
        let id = lease.id.to_string();
        let permanent = if retry_at.is_none() { "true" } else { "false" };
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query(sqlx::AssertSqlSafe(FAIL_FINAL_SQL.as_str()))
            .bind(now)
            .bind(&failure.code)
            .bind(&failure.message)
            .bind(permanent)
            .bind(retry_at)
            .bind(&id)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let ours = if moved == 1 {
            delete_moved(&mut tx, &id).await?;
            true
        } else {
            let sql = format!(
                "UPDATE jobs SET errors = {APPEND_ERROR}, state = 'retryable', run_at = ?5,
                     lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1
                 WHERE id = ?6 AND token = ?7 AND state = 'running'
                   AND NOT (?5 IS NULL OR attempt >= max_attempts)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(&failure.code)
                .bind(&failure.message)
                .bind(permanent)
                .bind(retry_at)
                .bind(&id)
                .bind(lease.token)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        };
        tx.commit().await?;
        Ok(ours)
    }

    async fn snooze(&self, lease: Lease, delay: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'scheduled', attempt = attempt - 1, run_at = ?,
                             lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
             WHERE id = ? AND token = ? AND state = 'running'",
        )
        .bind(now + ms(delay))
        .bind(now)
        .bind(lease.id.to_string())
        .bind(lease.token)
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn release(&self, leases: &[Lease]) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut n = 0;
        let mut tx = self.writer.begin().await?;
        for l in leases {
            let id = l.id.to_string();
            let cancelled = sqlx::query(sqlx::AssertSqlSafe(RELEASE_CANCELLED_SQL.as_str()))
                .bind(now)
                .bind(&id)
                .bind(l.token)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if cancelled == 1 {
                delete_moved(&mut tx, &id).await?;
                n += 1;
                continue;
            }
            n += sqlx::query(
                "UPDATE jobs SET state = 'available', attempt = attempt - 1, started_at = NULL,
                     lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1
                 WHERE id = ?2 AND token = ?3 AND state = 'running' AND NOT cancel_requested",
            )
            .bind(now)
            .bind(&id)
            .bind(l.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn finish_cancelled(&self, lease: Lease, reason: &str) -> Result<bool, StoreError> {
        let id = lease.id.to_string();
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query(sqlx::AssertSqlSafe(FINISH_CANCELLED_SQL.as_str()))
            .bind(now_ms())
            .bind("cancelled")
            .bind(reason)
            .bind("true")
            .bind(&id)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 1 {
            delete_moved(&mut tx, &id).await?;
        }
        tx.commit().await?;
        Ok(moved == 1)
    }

    async fn set_progress(
        &self,
        lease: Lease,
        stage: Option<&str>,
        progress: u8,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET stage = coalesce(?, stage), progress = ?, updated_at = ?
             WHERE id = ? AND token = ? AND state = 'running'",
        )
        .bind(stage)
        .bind(i64::from(progress.min(100)))
        .bind(now_ms())
        .bind(lease.id.to_string())
        .bind(lease.token)
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn cancel(&self, id: Uuid, owner: Option<UserId>) -> Result<CancelOutcome, StoreError> {
        let now = now_ms();
        let (id, owner) = (id.to_string(), rows::owner_text(owner));
        let mut tx = self.writer.begin().await?;
        let state: Option<JobState> = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
        )
        .bind(&id)
        .bind(&owner)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match state {
            Some(JobState::Running) => {
                sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE id = ?2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Cancelling
            }
            Some(_) => {
                sqlx::query(sqlx::AssertSqlSafe(CANCEL_WAITING_SQL.as_str()))
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                delete_moved(&mut tx, &id).await?;
                CancelOutcome::Cancelled
            }
            None => {
                let finished: Option<JobState> = sqlx::query_scalar(
                    "SELECT state FROM finished_jobs WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                )
                .bind(&id)
                .bind(&owner)
                .fetch_optional(&mut *tx)
                .await?;
                finished.map_or(CancelOutcome::NotFound, CancelOutcome::AlreadyFinished)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE queues SET paused = 0, updated_at = ? WHERE name = ?")
            .bind(now_ms())
            .bind(queue)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn rescue_expired(&self, crash_cap: u32) -> Result<Vec<Rescued>, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(
            "SELECT id, kind, attempt, max_attempts, rescues, cancel_requested FROM jobs
             WHERE state = 'running' AND lease_expires_at < ?
             ORDER BY lease_expires_at LIMIT 500",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut rescued = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Id = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let next = rescue_decision(
                &kind,
                row.try_get::<i64, _>("attempt")? as u32,
                row.try_get::<i64, _>("max_attempts")? as u32,
                row.try_get::<i64, _>("rescues")? as u32 + 1,
                crash_cap,
                row.try_get("cancel_requested")?,
            );
            let permanent = if next.state.is_final() {
                "true"
            } else {
                "false"
            };
            if next.state.is_final() {
                sqlx::query(sqlx::AssertSqlSafe(RESCUE_FINAL_SQL.as_str()))
                    .bind(now)
                    .bind(next.code)
                    .bind(&next.message)
                    .bind(permanent)
                    .bind(next.state.as_str())
                    .bind(id.0.to_string())
                    .execute(&mut *tx)
                    .await?;
                delete_moved(&mut tx, &id.0.to_string()).await?;
            } else {
                let sql = format!(
                    "UPDATE jobs SET errors = {APPEND_ERROR}, state = ?5, rescues = rescues + 1,
                         run_at = coalesce(?6, run_at),
                         lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1
                     WHERE id = ?7"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(next.code)
                    .bind(&next.message)
                    .bind(permanent)
                    .bind(next.state.as_str())
                    .bind(next.retry_in.map(|d| now + ms(d)))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            rescued.push(Rescued {
                id: id.0,
                kind,
                state: next.state,
            });
        }
        tx.commit().await?;
        Ok(rescued)
    }

    async fn create_generation(&self, g: NewGeneration) -> Result<GenerationEnqueued, StoreError> {
        let mut tx = self.writer.begin().await?;
        let outcome = create_generation_in(&mut tx, &g).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn create_generations(
        &self,
        gs: Vec<NewGeneration>,
    ) -> Result<Vec<GenerationEnqueued>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(gs.len());
        for g in &gs {
            outcomes.push(create_generation_in(&mut tx, g).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn create_generation_batch(
        &self,
        b: NewGenerationBatch,
    ) -> Result<BatchEnqueued, StoreError> {
        // One writer connection: a retry with the same key cannot run
        // between the check and the insert.
        let mut tx = self.writer.begin().await?;
        if b.idempotency_key.is_some()
            && let Some(existing) = existing_batch(&mut tx, &b).await?
        {
            tx.rollback().await?;
            return Ok(existing);
        }
        let batch_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO generation_batches (id, owner, idempotency_key, request_hash, created_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(batch_id.to_string())
        .bind(b.owner.to_string())
        .bind(&b.idempotency_key)
        .bind(&b.request_hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let (ids, jobs) = b.jobs()?;
        let job_ids: Vec<Uuid> = SqliteStore::enqueue_many_in(&mut tx, jobs)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        insert_generations(&mut tx, b.owner, Some(batch_id), &b.rows(&ids, &job_ids)).await?;
        tx.commit().await?;
        Ok(BatchEnqueued::Created { job_ids })
    }
}
