//! The queue on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, wake-ups
//! with `LISTEN/NOTIFY` (triggers in the migration send them).

use std::time::Duration;

use async_trait::async_trait;
use kiln_jobs::{GenerateImage, UserId};
use sqlx::{PgConnection, PgPool, Row, postgres::PgListener};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, Failure, JobRecord, JobState, JobWrites,
    Lease, NewJob, Queue, QueueStat, Rescued, StoreError, StoreEvent,
    generations::{BatchEnqueued, GenerationEnqueued, NewGeneration, NewGenerationBatch},
    rescue::rescue_decision,
    rows::{self, CLAIM_COLUMNS, ClaimRow, JOB_COLUMNS, JobRow},
};

mod accounts;
mod generations;
mod notify;

use crate::generations::NewGenerationRow;
use generations::insert_generations;
use notify::Notifier;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const AVAILABLE_CHANNEL: &str = "kiln_jobs_available";
const CANCEL_CHANNEL: &str = "kiln_jobs_cancel";
const CHANGED_CHANNEL: &str = "kiln_job_changed";

pub struct PgStore {
    pool: PgPool,
    listener: tokio::task::AbortHandle,
    notifier: Notifier,
}

/// The `LISTEN` task holds a clone of the pool; it ends with the store
/// instead of reconnecting forever to a database nobody uses any more.
impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Wraps a pool and starts the `LISTEN` task that turns notifications
    /// into [`StoreEvent`]s on `events`.
    pub fn new(pool: PgPool, events: broadcast::Sender<StoreEvent>) -> PgStore {
        let listener = tokio::spawn(listen(pool.clone(), events)).abort_handle();
        let notifier = Notifier::spawn(pool.clone());
        PgStore {
            pool,
            listener,
            notifier,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts a job inside the caller's transaction, so it commits or rolls
    /// back together with the rows it belongs to. After the commit, call
    /// [`Store::jobs_available`](crate::Store::jobs_available) so idle
    /// workers look at once; otherwise they find it at their next poll.
    pub async fn enqueue_in(conn: &mut PgConnection, job: NewJob) -> Result<Enqueued, StoreError> {
        let id = Uuid::now_v7();
        let fair_seq = fair_seq(&mut *conn, job.owner).await?;
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state, priority,
                               fair_seq, max_attempts, run_at, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6,
                     CASE WHEN $7::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
                     $8, $9, $10, coalesce($7, now()), $11)
             ON CONFLICT (coalesce(owner, ''), kind, idempotency_key)
                 WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(id)
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(rows::owner_text(job.owner))
        .bind(&job.payload)
        .bind(job.schema_version)
        .bind(job.run_at)
        .bind(job.priority)
        .bind(fair_seq)
        .bind(job.max_attempts as i32)
        .bind(&job.idempotency_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued { id, created: true });
        }
        let existing: Uuid = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE coalesce(owner, '') = coalesce($1, '') AND kind = $2 AND idempotency_key = $3",
        )
        .bind(rows::owner_text(job.owner))
        .bind(&job.kind)
        .bind(&job.idempotency_key)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Enqueued {
            id: existing,
            created: false,
        })
    }

    /// Inserts many jobs with one statement inside the caller's transaction.
    /// A job whose idempotency key exists already is skipped. Returns, for
    /// each inserted job, its position in `jobs` and its id.
    pub async fn enqueue_many_in(
        tx: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<(usize, Uuid)>, StoreError> {
        // Each owner's jobs continue that owner's round-robin sequence.
        let mut next_seq: std::collections::HashMap<Option<UserId>, i64> = Default::default();
        let n = jobs.len();
        let (mut ids, mut kinds, mut queues, mut owners, mut payloads) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut versions, mut priorities, mut seqs, mut maxes, mut run_ats, mut keys) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for job in jobs {
            let seq = match next_seq.get_mut(&job.owner) {
                Some(s) => s,
                None => {
                    let first = fair_seq(&mut *tx, job.owner).await?;
                    next_seq.entry(job.owner).or_insert(first)
                }
            };
            seqs.push(*seq);
            if job.owner.is_some() {
                *seq += 1;
            }
            ids.push(Uuid::now_v7());
            kinds.push(job.kind);
            queues.push(job.queue);
            owners.push(rows::owner_text(job.owner));
            payloads.push(job.payload.to_string());
            versions.push(job.schema_version);
            priorities.push(job.priority);
            maxes.push(job.max_attempts as i32);
            run_ats.push(job.run_at);
            keys.push(job.idempotency_key);
        }
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state, priority,
                               fair_seq, max_attempts, run_at, idempotency_key)
             SELECT id, kind, queue, owner, payload::jsonb, schema_version,
                    CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
                    priority, fair_seq, max_attempts, coalesce(run_at, now()), idempotency_key
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                         $7::smallint[], $8::bigint[], $9::int[], $10::timestamptz[], $11::text[])
                  AS t(id, kind, queue, owner, payload, schema_version, priority, fair_seq,
                       max_attempts, run_at, idempotency_key)
             ON CONFLICT (coalesce(owner, ''), kind, idempotency_key)
                 WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&queues)
        .bind(&owners)
        .bind(&payloads)
        .bind(&versions)
        .bind(&priorities)
        .bind(&seqs)
        .bind(&maxes)
        .bind(&run_ats)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        // Idempotent duplicates were skipped: say which positions went in.
        let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        Ok(ids
            .into_iter()
            .enumerate()
            .filter(|(_, id)| inserted.contains(id))
            .collect())
    }
}

/// The owner's place in the round-robin: one past its unfinished jobs.
/// System jobs (no owner) go first.
async fn fair_seq(conn: &mut PgConnection, owner: Option<UserId>) -> Result<i64, StoreError> {
    let Some(owner) = owner else { return Ok(0) };
    let owner = owner.to_string();
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs
         WHERE owner = $1 AND state IN ('available', 'scheduled', 'retryable', 'running')",
    )
    .bind(&owner)
    .fetch_one(conn)
    .await?;
    Ok(pending + 1)
}

async fn listen(pool: PgPool, events: broadcast::Sender<StoreEvent>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "job notifications unavailable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([AVAILABLE_CHANNEL, CANCEL_CHANNEL, CHANGED_CHANNEL])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed, retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        // Anything sent while we were not listening is unknown: wake everyone.
        let _ = events.send(StoreEvent::JobsAvailable(None));
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let event = match n.channel() {
                        CANCEL_CHANNEL => match n.payload().parse() {
                            Ok(id) => StoreEvent::CancelRequested(id),
                            Err(_) => continue,
                        },
                        CHANGED_CHANNEL => match n.payload().parse() {
                            Ok(id) => StoreEvent::JobChanged(id),
                            Err(_) => continue,
                        },
                        // An empty queue name: any queue.
                        _ => StoreEvent::JobsAvailable(
                            Some(n.payload().to_owned()).filter(|q| !q.is_empty()),
                        ),
                    };
                    let _ = events.send(event);
                }
                Ok(None) => {
                    // Connection lost; try_recv reconnects on the next call.
                    let _ = events.send(StoreEvent::JobsAvailable(None));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "job notifications lost, reconnecting");
                    tokio::time::sleep(delay).await;
                    break;
                }
            }
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The claim statement, built once: it runs on every claim.
static CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH picked AS (
                 SELECT j.id AS picked_id FROM unnest($1::text[]) AS q(name)
                 CROSS JOIN LATERAL (
                     SELECT id, priority, fair_seq, run_at FROM jobs
                     WHERE queue = q.name
                       AND state IN ('available', 'scheduled', 'retryable')
                       AND run_at <= now()
                       AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = q.name AND p.paused)
                     ORDER BY priority DESC, fair_seq, run_at, id
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 ) j
                 ORDER BY j.priority DESC, j.fair_seq, j.run_at, j.id
                 LIMIT $2
             )
             UPDATE jobs j
             SET state = 'running', attempt = j.attempt + 1, token = j.token + 1,
                 lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4),
                 started_at = now(), updated_at = now()
             FROM picked WHERE j.id = picked.picked_id
             RETURNING {CLAIM_COLUMNS}"
    )
});

#[async_trait]
impl Queue for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let rows = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
             FROM unnest($1::uuid[], $2::bigint[]) AS l(id, token)
             WHERE jobs.id = l.id AND jobs.token = l.token AND jobs.state = 'running'
             RETURNING jobs.id, jobs.cancel_requested",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(secs(lease))
        .fetch_all(&self.pool)
        .await?;
        let mut still_ours = std::collections::HashMap::new();
        for row in rows {
            let id: Uuid = row.try_get("id")?;
            let cancel: bool = row.try_get("cancel_requested")?;
            still_ours.insert(id, cancel);
        }
        Ok(leases
            .iter()
            .filter(|l| still_ours.get(&l.id).is_none_or(|cancel| *cancel))
            .copied()
            .collect())
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO queues (name, paused) VALUES ($1, true)
             ON CONFLICT (name) DO UPDATE SET paused = true, updated_at = now()",
        )
        .bind(queue)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT name FROM queues WHERE paused ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn prune_finished(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs
                 WHERE state IN ('succeeded', 'failed', 'cancelled')
                   AND finished_at < now() - make_interval(secs => $1)
                 LIMIT $2)",
        )
        .bind(secs(older_than))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)");
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows::jobs(rows)
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n,
                    extract(epoch FROM now() - min(run_at) FILTER (
                        WHERE run_at <= now()
                          AND state IN ('available', 'scheduled', 'retryable')))::float8 AS age
             FROM jobs GROUP BY queue, state ORDER BY queue, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let age: Option<f64> = row.try_get("age")?;
                Ok(QueueStat {
                    queue: row.try_get("queue")?,
                    state: row.try_get("state")?,
                    count: row.try_get("n")?,
                    oldest_due_age: age.map(|a| Duration::from_secs_f64(a.max(0.0))),
                })
            })
            .collect()
    }
}

#[async_trait]
impl JobWrites for PgStore {
    fn announce(&self, events: &[StoreEvent]) -> bool {
        self.notifier.send(events.iter().cloned());
        true
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError> {
        let mut tx = self.pool.begin().await?;
        let enqueued = PgStore::enqueue_in(&mut tx, job).await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<(usize, Uuid)>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let inserted = PgStore::enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // One round trip for every queue: a LATERAL index scan per queue
        // (`queue = ANY(..)` would sort every pending row instead), then
        // the best `limit` of those across queues. Rows locked but not
        // picked are released at the end of the statement.
        let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_SQL.as_str()))
            .bind(queues)
            .bind(i64::from(limit))
            .bind(worker)
            .bind(secs(lease))
            .fetch_all(&self.pool)
            .await?;
        rows::claimed(rows)
    }

    async fn complete(&self, done: &[Completion]) -> Result<u64, StoreError> {
        if done.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = done.iter().map(|c| c.lease.id).collect();
        let tokens: Vec<i64> = done.iter().map(|c| c.lease.token).collect();
        let results: Vec<String> = done.iter().map(|c| c.result.to_string()).collect();
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'succeeded', result = c.result::jsonb, progress = 100,
                             finished_at = now(), updated_at = now(),
                             lease_owner = NULL, lease_expires_at = NULL
             FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS c(id, token, result)
             WHERE jobs.id = c.id AND jobs.token = c.token AND jobs.state = 'running'",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&results)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }

    async fn fail(&self, lease: Lease, failure: Failure) -> Result<bool, StoreError> {
        let retry_in = failure.retry_in.map(secs);
        let updated = sqlx::query(
            "UPDATE jobs SET
                 state = CASE WHEN $3::float8 IS NULL OR attempt >= max_attempts
                              THEN 'failed' ELSE 'retryable' END,
                 run_at = CASE WHEN $3::float8 IS NULL OR attempt >= max_attempts
                               THEN run_at ELSE now() + make_interval(secs => $3) END,
                 finished_at = CASE WHEN $3::float8 IS NULL OR attempt >= max_attempts
                                    THEN now() END,
                 errors = errors || jsonb_build_array(jsonb_build_object(
                     'attempt', attempt, 'at', now(), 'code', $4::text, 'message', $5::text,
                     'permanent', $3::float8 IS NULL)),
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND token = $2 AND state = 'running'",
        )
        .bind(lease.id)
        .bind(lease.token)
        .bind(retry_in)
        .bind(&failure.code)
        .bind(&failure.message)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn snooze(&self, lease: Lease, delay: Duration) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'scheduled', attempt = attempt - 1,
                             run_at = now() + make_interval(secs => $3),
                             lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND token = $2 AND state = 'running'",
        )
        .bind(lease.id)
        .bind(lease.token)
        .bind(secs(delay))
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn release(&self, leases: &[Lease]) -> Result<u64, StoreError> {
        if leases.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let updated = sqlx::query(
            "UPDATE jobs SET
                 state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'available' END,
                 finished_at = CASE WHEN cancel_requested THEN now() END,
                 attempt = attempt - 1, started_at = NULL,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             FROM unnest($1::uuid[], $2::bigint[]) AS l(id, token)
             WHERE jobs.id = l.id AND jobs.token = l.token AND jobs.state = 'running'",
        )
        .bind(&ids)
        .bind(&tokens)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }

    async fn finish_cancelled(&self, lease: Lease, reason: &str) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
                 errors = errors || jsonb_build_array(jsonb_build_object(
                     'attempt', attempt, 'at', now(), 'code', 'cancelled', 'message', $3::text,
                     'permanent', true)),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND token = $2 AND state = 'running'",
        )
        .bind(lease.id)
        .bind(lease.token)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn set_progress(
        &self,
        lease: Lease,
        stage: Option<&str>,
        progress: u8,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET stage = coalesce($3, stage), progress = $4, updated_at = now()
             WHERE id = $1 AND token = $2 AND state = 'running'",
        )
        .bind(lease.id)
        .bind(lease.token)
        .bind(stage)
        .bind(i16::from(progress.min(100)))
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn cancel(&self, id: Uuid, owner: Option<UserId>) -> Result<CancelOutcome, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET
                 state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,
                 cancel_requested = true,
                 finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
                 updated_at = now()
             WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
               AND state NOT IN ('succeeded', 'failed', 'cancelled')
             RETURNING state",
        )
        .bind(id)
        .bind(rows::owner_text(owner))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(match row.try_get("state")? {
                JobState::Running => CancelOutcome::Cancelling,
                _ => CancelOutcome::Cancelled,
            });
        }
        let row = sqlx::query(
            "SELECT state FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
        )
        .bind(id)
        .bind(rows::owner_text(owner))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => CancelOutcome::AlreadyFinished(row.try_get("state")?),
            None => CancelOutcome::NotFound,
        })
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE queues SET paused = false, updated_at = now() WHERE name = $1")
            .bind(queue)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn rescue_expired(&self, crash_cap: u32) -> Result<Vec<Rescued>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, kind, attempt, max_attempts, rescues, cancel_requested FROM jobs
             WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at LIMIT 500
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut rescued = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let attempt = row.try_get::<i32, _>("attempt")? as u32;
            let max_attempts = row.try_get::<i32, _>("max_attempts")? as u32;
            let rescues = row.try_get::<i32, _>("rescues")? as u32 + 1;
            let cancel_requested: bool = row.try_get("cancel_requested")?;
            let next = rescue_decision(
                &kind,
                attempt,
                max_attempts,
                rescues,
                crash_cap,
                cancel_requested,
            );
            sqlx::query(
                "UPDATE jobs SET state = $2, rescues = rescues + 1,
                     run_at = CASE WHEN $3::float8 IS NULL THEN run_at
                                   ELSE now() + make_interval(secs => $3) END,
                     finished_at = CASE WHEN $2 IN ('failed', 'cancelled') THEN now() END,
                     errors = errors || jsonb_build_array(jsonb_build_object(
                         'attempt', attempt, 'at', now(), 'code', $4::text, 'message', $5::text,
                         'permanent', $2 <> 'retryable')),
                     lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(next.state.as_str())
            .bind(next.retry_in.map(secs))
            .bind(next.code)
            .bind(&next.message)
            .execute(&mut *tx)
            .await?;
            rescued.push(Rescued {
                id,
                kind,
                state: next.state,
            });
        }
        tx.commit().await?;
        Ok(rescued)
    }

    async fn create_generation(&self, g: NewGeneration) -> Result<GenerationEnqueued, StoreError> {
        let id = Uuid::now_v7();
        let mut job = NewJob::of(&GenerateImage { generation_id: id })?.owner(g.owner);
        job.idempotency_key = g.idempotency_key.clone();
        let mut tx = self.pool.begin().await?;
        let enqueued = PgStore::enqueue_in(&mut tx, job).await?;
        if !enqueued.created {
            tx.rollback().await?;
            let hash: Option<String> =
                sqlx::query_scalar("SELECT request_hash FROM generations WHERE job_id = $1")
                    .bind(enqueued.id)
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(if hash.as_deref() == Some(g.input.request_hash.as_str()) {
                GenerationEnqueued::Existing {
                    job_id: enqueued.id,
                }
            } else {
                GenerationEnqueued::KeyReused
            });
        }
        let row = NewGenerationRow {
            id,
            job_id: enqueued.id,
            input: &g.input,
        };
        insert_generations(&mut tx, g.owner, None, &[row]).await?;
        tx.commit().await?;
        Ok(GenerationEnqueued::Created {
            job_id: enqueued.id,
        })
    }

    async fn create_generation_batch(
        &self,
        b: NewGenerationBatch,
    ) -> Result<BatchEnqueued, StoreError> {
        let batch_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        // A concurrent request with the same key waits here for the first
        // to commit, then finds its batch.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO generation_batches (id, owner, idempotency_key, request_hash)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(batch_id)
        .bind(b.owner.0)
        .bind(&b.idempotency_key)
        .bind(&b.request_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            tx.rollback().await?;
            return self.existing_batch(&b).await;
        }
        let ids: Vec<Uuid> = b.items.iter().map(|_| Uuid::now_v7()).collect();
        let jobs = ids
            .iter()
            .map(|&generation_id| Ok(NewJob::of(&GenerateImage { generation_id })?.owner(b.owner)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // No job carries a key of its own, so every one goes in, in order.
        let job_ids: Vec<Uuid> = PgStore::enqueue_many_in(&mut tx, jobs)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let rows: Vec<NewGenerationRow> = ids
            .iter()
            .zip(&job_ids)
            .zip(&b.items)
            .map(|((&id, &job_id), input)| NewGenerationRow { id, job_id, input })
            .collect();
        insert_generations(&mut tx, b.owner, Some(batch_id), &rows).await?;
        tx.commit().await?;
        Ok(BatchEnqueued::Created { job_ids })
    }
}
