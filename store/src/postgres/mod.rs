//! The queue on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, wake-ups
//! with `LISTEN/NOTIFY` (triggers in the migration send them).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use kiln_jobs::UserId;
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

mod access_log;
mod accounts;
mod credits;
mod db;
mod deletion;
mod export;
mod generations;
mod notices;
mod notify;
mod operator_exports;
mod operators;
mod orders;
mod retention;
mod schedules;
mod subject_requests;
mod webhooks;
mod workers;

pub use db::Db;
use generations::insert_generations;
use notify::Notifier;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const AVAILABLE_CHANNEL: &str = "kiln_jobs_available";
const CANCEL_CHANNEL: &str = "kiln_jobs_cancel";
const CHANGED_CHANNEL: &str = "kiln_job_changed";
/// A revoked session's token hash; sent by the revoking write itself.
const SESSION_CHANNEL: &str = "kiln_session_revoked";

pub struct PgStore {
    pool: Db,
    /// Postgres itself, for what needs a session of its own: `LISTEN` and
    /// the migrations' advisory lock. The same pool as `pool` unless that
    /// goes through a pooler.
    direct: PgPool,
    listener: tokio::task::AbortHandle,
    /// True while the `LISTEN` connection is up: every other process's
    /// notifications reach this one.
    listening: Arc<AtomicBool>,
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
    /// Wraps a pool and starts the `LISTEN` task (on `direct`) that turns
    /// notifications into [`StoreEvent`]s on `events`.
    pub fn new(pool: Db, direct: PgPool, events: broadcast::Sender<StoreEvent>) -> PgStore {
        let listening = Arc::new(AtomicBool::new(false));
        let listener =
            tokio::spawn(listen(direct.clone(), events, listening.clone())).abort_handle();
        let notifier = Notifier::spawn(pool.clone());
        PgStore {
            pool,
            direct,
            listener,
            listening,
            notifier,
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.pool.pool()
    }

    /// Inserts a job inside the caller's transaction, so it commits or rolls
    /// back together with the rows it belongs to. After the commit, call
    /// [`Store::jobs_available`](crate::Store::jobs_available) so idle
    /// workers look at once; otherwise they find it at their next poll.
    pub async fn enqueue_in(conn: &mut PgConnection, job: NewJob) -> Result<Enqueued, StoreError> {
        let id = Uuid::now_v7();
        let inserted: Option<(Uuid,)> = bind_job(
            sqlx::query_as(sqlx::AssertSqlSafe(ENQUEUE_SQL.as_str())),
            id,
            &job,
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((id,)) = inserted {
            return Ok(Enqueued { id, created: true });
        }
        let existing = existing_keyed_job(&mut *conn, &job).await?;
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
        let mut credits = Vec::with_capacity(n);
        let (mut hook_urls, mut hook_events) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut parents, mut follow_up_credits) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut traceparents = Vec::with_capacity(n);
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
            credits.push(job.credits as i32);
            hook_urls.push(job.webhook.as_ref().map(|w| w.url.clone()));
            hook_events.push(job.webhook.as_ref().map(|w| w.events.as_str()));
            parents.push(job.parent_id);
            follow_up_credits.push(job.follow_up_credits as i32);
            traceparents.push(job.traceparent);
        }
        // Keyed jobs go in only with their keys (see `enqueue_in`).
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "WITH t AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::int[], $7::smallint[], $8::bigint[], $9::int[],
                                      $10::timestamptz[], $11::text[], $12::int[],
                                      $13::text[], $14::text[], $15::uuid[], $16::int[],
                                      $17::text[])
                      AS t(id, kind, queue, owner, payload, schema_version, priority, fair_seq,
                           max_attempts, run_at, idempotency_key, credits, webhook_url,
                           webhook_events, parent_id, follow_up_credits, traceparent)),
             keys AS (
                 INSERT INTO job_keys (owner, kind, idempotency_key, job_id)
                 SELECT coalesce(owner, ''), kind, idempotency_key, id FROM t
                 WHERE idempotency_key IS NOT NULL
                 ON CONFLICT DO NOTHING
                 RETURNING job_id),
             hooks AS (
                 INSERT INTO webhooks (job_id, owner, url, events)
                 SELECT id, owner, webhook_url, webhook_events FROM t
                 WHERE webhook_url IS NOT NULL
                   AND (idempotency_key IS NULL OR id IN (SELECT job_id FROM keys)))
             INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state, priority,
                               fair_seq, max_attempts, run_at, idempotency_key, credits,
                               parent_id, follow_up_credits, traceparent)
             SELECT id, kind, queue, owner, payload::jsonb, schema_version,
                    CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
                    priority, fair_seq, max_attempts, coalesce(run_at, now()), idempotency_key,
                    credits, parent_id, follow_up_credits, traceparent
             FROM t
             WHERE idempotency_key IS NULL OR id IN (SELECT job_id FROM keys)
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
        .bind(&credits)
        .bind(&hook_urls)
        .bind(&hook_events)
        .bind(&parents)
        .bind(&follow_up_credits)
        .bind(&traceparents)
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

impl PgStore {
    /// Drops the day partitions of `finished_jobs` that end at or before
    /// `cutoff`, and the keys and webhooks of their jobs; returns the rows
    /// they held.
    /// Detached in one short transaction (DETACH locks the parent
    /// exclusively: completions wait for it), then counted and dropped
    /// one by one; a partition detached by a run that died is found again
    /// by name.
    async fn drop_finished_days(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln_finished_partitions'))")
            .execute(&mut *tx)
            .await?;
        // Fail rather than stall the queue behind a long read of the table.
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'finished_jobs'::regclass
               AND c.relname ~ '^finished_jobs_p[0-9]{8}$'
               AND (to_date(substr(c.relname, 16), 'YYYYMMDD') + 1)::timestamp
                   AT TIME ZONE 'UTC' <= $1",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        for name in &old {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE finished_jobs DETACH PARTITION {name}"
            )))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        let detached: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c
             WHERE c.relname ~ '^finished_jobs_p[0-9]{8}$' AND c.relkind = 'r'
               AND NOT c.relispartition AND c.relnamespace = to_regnamespace(current_schema())",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut removed = 0;
        for name in &detached {
            let mut tx = self.pool.begin().await?;
            // Names match the pattern above, so they need no quoting.
            let rows: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM job_keys WHERE job_id IN
                     (SELECT id FROM {name} WHERE idempotency_key IS NOT NULL)"
            )))
            .execute(&mut *tx)
            .await?;
            for table in ["webhooks", "webhook_deliveries"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE job_id IN (SELECT id FROM {name})"
                )))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(partition = %name, rows, "dropped a day of finished jobs");
            removed += rows as u64;
        }
        Ok(removed)
    }
}

/// The statement that inserts one job, `job`, and then `then` (more
/// `WITH` members that may read `job`), returning `returning` of `job`.
/// `$1`–`$16` are bound by [`bind_job`]. A keyed job goes in only with its
/// key: a concurrent enqueue of the same key waits on the key's row, then
/// inserts nothing and finds the first job ([`existing_keyed_job`]).
/// The owner's place in the round-robin is read in the same statement (see
/// [`fair_seq`]).
fn insert_job_sql(then: &str, returning: &str) -> String {
    format!(
        "WITH key AS (
             INSERT INTO job_keys (owner, kind, idempotency_key, job_id)
             SELECT coalesce($4, ''), $2, $10, $1 WHERE $10::text IS NOT NULL
             ON CONFLICT DO NOTHING
             RETURNING job_id),
         job AS (
             INSERT INTO jobs (id, kind, queue, owner, payload, schema_version, state, priority,
                               fair_seq, max_attempts, run_at, idempotency_key, credits,
                               parent_id, follow_up_credits, traceparent)
             SELECT $1, $2, $3, $4, $5, $6,
                    CASE WHEN $7::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
                    $8,
                    CASE WHEN $4::text IS NULL THEN 0 ELSE coalesce(
                        (SELECT fair_seq FROM jobs WHERE owner = $4
                         ORDER BY fair_seq DESC LIMIT 1), 0) + 1 END,
                    $9, coalesce($7, now()), $10, $11, $14, $15, $16
             WHERE $10::text IS NULL OR EXISTS (SELECT 1 FROM key)
             RETURNING *),
         hook AS (
             INSERT INTO webhooks (job_id, owner, url, events)
             SELECT id, owner, $12, $13 FROM job WHERE $12::text IS NOT NULL){then}
         SELECT {returning} FROM job"
    )
}

static ENQUEUE_SQL: LazyLock<String> = LazyLock::new(|| insert_job_sql("", "id"));

/// One generation and its `generate_image` job in one statement (so one
/// round trip, no transaction to open and close): `$17`–`$25` are the
/// generation's columns. The job's credits are reserved by the insert
/// itself (trigger `jobs_reserve_credits`), so a short balance stores
/// nothing.
static CREATE_GENERATION_SQL: LazyLock<String> = LazyLock::new(|| {
    insert_job_sql(
        ",
         generation AS (
             INSERT INTO generations (id, job_id, owner, prompt, model, width, height, n,
                                      request_hash, reference_urls)
             SELECT $17, job.id, $18, $19, $20, $21, $22, $23, $24, $25::jsonb FROM job)",
        JOB_COLUMNS,
    )
});

/// Binds `$1`–`$16` of [`insert_job_sql`].
fn bind_job<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    id: Uuid,
    job: &'q NewJob,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(id)
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(rows::owner_text(job.owner))
        .bind(&job.payload)
        .bind(job.schema_version)
        .bind(job.run_at)
        .bind(job.priority)
        .bind(job.max_attempts as i32)
        .bind(&job.idempotency_key)
        .bind(job.credits as i32)
        .bind(job.webhook.as_ref().map(|w| w.url.as_str()))
        .bind(job.webhook.as_ref().map(|w| w.events.as_str()))
        .bind(job.parent_id)
        .bind(job.follow_up_credits as i32)
        .bind(&job.traceparent)
}

/// Records successes on `conn` (a transaction's, or alone); returns how
/// many were still ours.
async fn complete_on(conn: &mut PgConnection, done: &[Completion]) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = done.iter().map(|c| c.lease.id).collect();
    let tokens: Vec<i64> = done.iter().map(|c| c.lease.token).collect();
    let results: Vec<String> = done.iter().map(|c| c.result.to_string()).collect();
    let updated = sqlx::query(sqlx::AssertSqlSafe(COMPLETE_SQL.as_str()))
        .bind(&ids)
        .bind(&tokens)
        .bind(&results)
        .execute(&mut *conn)
        .await?;
    Ok(updated.rows_affected())
}

/// The job that holds `job`'s idempotency key, when the insert found it.
async fn existing_keyed_job(conn: &mut PgConnection, job: &NewJob) -> Result<Uuid, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT job_id FROM job_keys
         WHERE owner = coalesce($1, '') AND kind = $2 AND idempotency_key = $3",
    )
    .bind(rows::owner_text(job.owner))
    .bind(&job.kind)
    .bind(&job.idempotency_key)
    .fetch_one(conn)
    .await?)
}

/// One generation and its job, with [`CREATE_GENERATION_SQL`]; then, if
/// the idempotency key was taken (by this request before, or by another
/// request), what became of it.
async fn create_generation_on(
    conn: &mut PgConnection,
    g: &NewGeneration,
) -> Result<GenerationEnqueued, StoreError> {
    let id = Uuid::now_v7();
    let mut job = g.input.job(id, g.owner)?;
    job.idempotency_key = g.idempotency_key.clone();
    let input = &g.input;
    let references = serde_json::json!(input.reference_urls).to_string();
    let created: Option<JobRow> = bind_job(
        sqlx::query_as(sqlx::AssertSqlSafe(CREATE_GENERATION_SQL.as_str())),
        Uuid::now_v7(),
        &job,
    )
    .bind(id)
    .bind(g.owner.0)
    .bind(&input.prompt)
    .bind(&input.model)
    .bind(input.width as i32)
    .bind(input.height as i32)
    .bind(input.n as i32)
    .bind(&input.request_hash)
    .bind(&references)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = created {
        return Ok(GenerationEnqueued::Created {
            job: Box::new(row.try_into()?),
        });
    }
    let job_id = existing_keyed_job(&mut *conn, &job).await?;
    let hash: Option<String> =
        sqlx::query_scalar("SELECT request_hash FROM generations WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(GenerationEnqueued::retried(
        job_id,
        hash.as_deref(),
        &input.request_hash,
    ))
}

/// The owner's place in the round-robin: one past the last of its
/// unfinished jobs, so an owner's jobs keep their order and an owner with
/// nothing waiting starts at the front.
/// System jobs (no owner) go first.
async fn fair_seq(conn: &mut PgConnection, owner: Option<UserId>) -> Result<i64, StoreError> {
    let Some(owner) = owner else { return Ok(0) };
    let owner = owner.to_string();
    // `jobs` holds only unfinished jobs; one probe of `jobs_owner_seq`.
    // Not `max(fair_seq)`: the generic plan a connection caches while the
    // table is small aggregates every entry of the owner (6 ms at 5,000
    // queued jobs); an ORDER BY the index answers is its cheapest plan at
    // any size.
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT fair_seq FROM jobs WHERE owner = $1 ORDER BY fair_seq DESC LIMIT 1",
    )
    .bind(&owner)
    .fetch_optional(conn)
    .await?;
    Ok(last.unwrap_or(0) + 1)
}

async fn listen(pool: PgPool, events: broadcast::Sender<StoreEvent>, listening: Arc<AtomicBool>) {
    let mut delay = Duration::from_millis(100);
    loop {
        listening.store(false, Ordering::SeqCst);
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
            .listen_all([
                AVAILABLE_CHANNEL,
                CANCEL_CHANNEL,
                CHANGED_CHANNEL,
                SESSION_CHANNEL,
            ])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed, retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        // Anything sent while we were not listening is unknown: wake everyone
        // (and forget every remembered session) before trusting the stream.
        let _ = events.send(StoreEvent::JobsAvailable(None));
        listening.store(true, Ordering::SeqCst);
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
                        SESSION_CHANNEL => StoreEvent::SessionRevoked(n.payload().to_owned()),
                        // An empty queue name: any queue.
                        _ => StoreEvent::JobsAvailable(
                            Some(n.payload().to_owned()).filter(|q| !q.is_empty()),
                        ),
                    };
                    let _ = events.send(event);
                }
                Ok(None) => {
                    // Connection lost: reconnect here, so `listening` says
                    // false until the channels are listened to again.
                    listening.store(false, Ordering::SeqCst);
                    let _ = events.send(StoreEvent::JobsAvailable(None));
                    break;
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

/// A claim statement: the best `$2` due jobs across the queues `from`
/// lists (as `q(name, …)`), at most `per_queue` of each, skipping queues
/// whose settings row matches `skip`.
fn claim_sql(from: &str, skip: &str, per_queue: &str) -> String {
    format!(
        "WITH picked AS (
                 SELECT j.id AS picked_id FROM {from}
                 CROSS JOIN LATERAL (
                     SELECT id, priority, fair_seq, run_at FROM jobs
                     WHERE queue = q.name
                       AND state IN ('available', 'scheduled', 'retryable')
                       AND run_at <= now()
                       AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = q.name AND ({skip}))
                     ORDER BY priority DESC, fair_seq, run_at, id
                     LIMIT {per_queue}
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
}

/// The claim statement, built once: it runs on every claim. Queues with a
/// concurrency limit are left to [`CLAIM_CAPPED_SQL`].
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    claim_sql(
        "unnest($1::text[]) AS q(name)",
        "p.paused OR p.concurrency_limit IS NOT NULL",
        "$2",
    )
});

/// The claim of limited queues: `$5` is each queue's free slots, counted
/// under the lock of its settings row (`operators.rs`).
static CLAIM_CAPPED_SQL: LazyLock<String> = LazyLock::new(|| {
    claim_sql(
        "unnest($1::text[], $5::bigint[]) AS q(name, cap)",
        "p.paused",
        "q.cap",
    )
});

/// A `jsonb` array of one error entry for the job row at hand: `$code`,
/// `$message`, `$permanent` are SQL expressions.
fn error_entry(code: &str, message: &str, permanent: &str) -> String {
    format!(
        "errors || jsonb_build_array(jsonb_build_object(
             'attempt', attempt, 'at', now(), 'code', {code}, 'message', {message},
             'permanent', {permanent}))"
    )
}

/// The order a statement that ends several jobs moves them in. Ending a
/// job that holds credits locks its owner's credit account (trigger
/// `finished_jobs_settle_credits`); a group commit locks accounts in the
/// same order (`group_commit.rs`), so two such transactions never wait on
/// each other in a cycle. Byte order, as Rust sorts a [`UserId`].
const BY_OWNER: &str = "ORDER BY owner COLLATE \"C\"";

/// Successes: every job still ours leaves `jobs` for `finished_jobs` in
/// one statement; the count is the rows moved.
static COMPLETE_SQL: LazyLock<String> = LazyLock::new(|| {
    let insert = rows::move_finished(
        &[
            ("state", "'succeeded'"),
            ("result", "new_result::jsonb"),
            ("progress", "100"),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!(
        "WITH done AS (
             DELETE FROM jobs USING unnest($1::uuid[], $2::bigint[], $3::text[]) AS c(id, token, result)
             WHERE jobs.id = c.id AND jobs.token = c.token AND jobs.state = 'running'
             RETURNING jobs.*, c.result AS new_result)
         {insert} {BY_OWNER}"
    )
});

/// A failed attempt: the last (or a permanent failure) moves the job to
/// `finished_jobs`, any other makes it retryable. The two branches are
/// disjoint on columns only a claim changes, and a claim bumps the token.
static FAIL_SQL: LazyLock<String> = LazyLock::new(|| {
    let error = error_entry("$4::text", "$5::text", "$3::float8 IS NULL");
    let insert = rows::move_finished(
        &[
            ("state", "'failed'"),
            ("errors", &error),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!(
        "WITH done AS (
             DELETE FROM jobs
             WHERE id = $1 AND token = $2 AND state = 'running'
               AND ($3::float8 IS NULL OR attempt >= max_attempts)
             RETURNING *),
         moved AS ({insert} RETURNING 1),
         retried AS (
             UPDATE jobs SET state = 'retryable', run_at = now() + make_interval(secs => $3),
                 errors = {error},
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND token = $2 AND state = 'running'
               AND NOT ($3::float8 IS NULL OR attempt >= max_attempts)
             RETURNING 1)
         SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM retried)"
    )
});

/// Hands jobs back; one whose cancellation was asked for ends instead. The
/// rows are locked first (`cancel_requested` may change under a statement).
static RELEASE_SQL: LazyLock<String> = LazyLock::new(|| {
    let insert = rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("attempt", "attempt - 1"),
            ("started_at", "NULL"),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!(
        "WITH l AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS l(id, token)),
         done AS (
             DELETE FROM jobs USING l
             WHERE jobs.id = l.id AND jobs.token = l.token AND jobs.state = 'running'
               AND jobs.cancel_requested
             RETURNING jobs.*),
         moved AS ({insert} {BY_OWNER} RETURNING 1),
         back AS (
             UPDATE jobs SET state = 'available', attempt = jobs.attempt - 1, started_at = NULL,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             FROM l
             WHERE jobs.id = l.id AND jobs.token = l.token AND jobs.state = 'running'
               AND NOT jobs.cancel_requested
             RETURNING 1)
         SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM back)"
    )
});

static FINISH_CANCELLED_SQL: LazyLock<String> = LazyLock::new(|| {
    let error = error_entry("'cancelled'", "$3::text", "true");
    let insert = rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("errors", &error),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!(
        "WITH done AS (
             DELETE FROM jobs WHERE id = $1 AND token = $2 AND state = 'running' RETURNING *)
         {insert}"
    )
});

/// Cancels a waiting job (locked by the caller): it ends at once.
static CANCEL_WAITING_SQL: LazyLock<String> = LazyLock::new(|| {
    let insert = rows::move_finished(
        &[
            ("state", "'cancelled'"),
            ("cancel_requested", "true"),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!("WITH done AS (DELETE FROM jobs WHERE id = $1 RETURNING *) {insert}")
});

/// A rescue that ends a job (out of attempts, crash-looping, or cancelled).
static RESCUE_FINAL_SQL: LazyLock<String> = LazyLock::new(|| {
    let error = error_entry("$3::text", "$4::text", "true");
    let insert = rows::move_finished(
        &[
            ("state", "$2::text"),
            ("rescues", "rescues + 1"),
            ("errors", &error),
            ("finished_at", "now()"),
            ("updated_at", "now()"),
        ],
        "done",
    );
    format!("WITH done AS (DELETE FROM jobs WHERE id = $1 RETURNING *) {insert}")
});

/// A job by id, in whichever table holds it: one statement, one snapshot,
/// so a job moving meanwhile is seen once.
/// A job is in one table or the other; `LIMIT 1` ends the scan at the
/// first, so an unfinished job (every status poll of a running one) never
/// probes the `finished_jobs` partitions (one primary-key probe each):
/// 17-19% more reads a second in pgbench, 8 clients, 6 partitions.
static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1
         UNION ALL SELECT {JOB_COLUMNS} FROM finished_jobs WHERE id = $1
         LIMIT 1"
    )
});

static GET_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)
         UNION ALL SELECT {JOB_COLUMNS} FROM finished_jobs WHERE id = ANY($1)"
    )
});

static CHILDREN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id = ANY($1)
         UNION ALL SELECT {JOB_COLUMNS} FROM finished_jobs WHERE parent_id = ANY($1)
         ORDER BY id"
    )
});

/// How many days ahead (UTC) day partitions of `finished_jobs` exist.
const PARTITION_DAYS_AHEAD: i32 = 3;

#[async_trait]
impl Queue for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The migrator holds a session's advisory lock: never through a
        // transaction pooler.
        MIGRATOR.run(&self.direct).await?;
        self.ensure_finished_partitions().await
    }

    async fn ensure_finished_partitions(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT kiln_ensure_finished_partitions((now() AT TIME ZONE 'UTC')::date, $1)")
            .bind(PARTITION_DAYS_AHEAD)
            .execute(&self.pool)
            .await?;
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

    async fn prune_finished(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        // Whole days first: O(1) each, however many rows they hold.
        let mut removed = self.drop_finished_days(cutoff).await?;
        // Then what is left older than the cutoff: the DEFAULT partition's
        // rows, and the part of the day the cutoff falls in.
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM finished_jobs f
                 WHERE (f.id, f.finished_at) IN (
                     SELECT id, finished_at FROM finished_jobs WHERE finished_at < $1 LIMIT $2)
                 RETURNING f.id, f.idempotency_key),
             keys AS (
                 DELETE FROM job_keys
                 WHERE job_id IN (SELECT id FROM gone WHERE idempotency_key IS NOT NULL)),
             hooks AS (DELETE FROM webhooks WHERE job_id IN (SELECT id FROM gone)),
             sent AS (DELETE FROM webhook_deliveries WHERE job_id IN (SELECT id FROM gone))
             SELECT count(*) FROM gone",
        )
        .bind(cutoff)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?;
        removed += deleted as u64;
        Ok(removed)
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(GET_SQL.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(JobRecord::try_from).transpose()
    }

    async fn children_of(&self, parents: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(CHILDREN_SQL.as_str()))
            .bind(parents)
            .fetch_all(&self.pool)
            .await?;
        rows::jobs(rows)
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(GET_MANY_SQL.as_str()))
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
             FROM (SELECT queue, state, run_at FROM jobs
                   UNION ALL SELECT queue, state, run_at FROM finished_jobs) j
             GROUP BY queue, state ORDER BY queue, state",
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

    fn announce(&self, events: &[StoreEvent]) -> bool {
        self.notifier.send(events.iter().cloned());
        true
    }

    fn hears_every_process(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
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
        let mut conn = self.pool.acquire().await?;
        let completed = complete_on(&mut conn, done).await?;
        conn.done().await?;
        Ok(completed)
    }

    async fn complete_then(
        &self,
        done: &Completion,
        follow_ups: Vec<NewJob>,
    ) -> Result<Option<Vec<Uuid>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if complete_on(&mut tx, std::slice::from_ref(done)).await? == 0 {
            return Ok(None);
        }
        let (owner, cancel_requested): (Option<String>, bool) = sqlx::query_as(
            "SELECT owner, cancel_requested FROM finished_jobs WHERE id = $1 AND state = 'succeeded'",
        )
        .bind(done.lease.id)
        .fetch_one(&mut *tx)
        .await?;
        if cancel_requested {
            // Its owner cancelled it while it ran: what would follow, too.
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        }
        let jobs = crate::queue::as_follow_ups(follow_ups, done.lease.id, rows::owner(owner)?);
        let ids = PgStore::enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(Some(ids.into_iter().map(|(_, id)| id).collect()))
    }

    async fn fail(&self, lease: Lease, failure: Failure) -> Result<bool, StoreError> {
        let retry_in = failure.retry_in.map(secs);
        let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(FAIL_SQL.as_str()))
            .bind(lease.id)
            .bind(lease.token)
            .bind(retry_in)
            .bind(&failure.code)
            .bind(&failure.message)
            .fetch_one(&self.pool)
            .await?;
        Ok(changed == 1)
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT 1 FROM jobs JOIN unnest($1::uuid[], $2::bigint[]) AS l(id, token)
                 ON jobs.id = l.id AND jobs.token = l.token
             WHERE jobs.state = 'running'
             FOR UPDATE OF jobs",
        )
        .bind(&ids)
        .bind(&tokens)
        .execute(&mut *tx)
        .await?;
        let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(RELEASE_SQL.as_str()))
            .bind(&ids)
            .bind(&tokens)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed as u64)
    }

    async fn finish_cancelled(&self, lease: Lease, reason: &str) -> Result<bool, StoreError> {
        let updated = sqlx::query(sqlx::AssertSqlSafe(FINISH_CANCELLED_SQL.as_str()))
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
        let owner = rows::owner_text(owner);
        let mut tx = self.pool.begin().await?;
        // Locked first: a claim may make the job running meanwhile, and the
        // two outcomes are different writes.
        let state: Option<JobState> = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
             FOR UPDATE",
        )
        .bind(id)
        .bind(&owner)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match state {
            Some(JobState::Running) => {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                CancelOutcome::Cancelling
            }
            Some(_) => {
                sqlx::query(sqlx::AssertSqlSafe(CANCEL_WAITING_SQL.as_str()))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::Cancelled
            }
            // Not waiting or running: finished (this statement's snapshot
            // sees a job that moved while we waited), or none of ours.
            None => {
                let finished: Option<JobState> = sqlx::query_scalar(
                    "SELECT state FROM finished_jobs
                     WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                )
                .bind(id)
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
             WHERE lease_expires_at < now() AND state = 'running'
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
            if next.state.is_final() {
                sqlx::query(sqlx::AssertSqlSafe(RESCUE_FINAL_SQL.as_str()))
                    .bind(id)
                    .bind(next.state.as_str())
                    .bind(next.code)
                    .bind(&next.message)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "UPDATE jobs SET state = $2, rescues = rescues + 1,
                         run_at = CASE WHEN $3::float8 IS NULL THEN run_at
                                       ELSE now() + make_interval(secs => $3) END,
                         errors = errors || jsonb_build_array(jsonb_build_object(
                             'attempt', attempt, 'at', now(), 'code', $4::text,
                             'message', $5::text, 'permanent', false)),
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
            }
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
        // No transaction: the statement is one.
        let mut conn = self.pool.acquire().await?;
        let created = create_generation_on(&mut conn, &g).await?;
        conn.done().await?;
        Ok(created)
    }

    async fn create_generations(
        &self,
        gs: Vec<NewGeneration>,
    ) -> Result<Vec<GenerationEnqueued>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(gs.len());
        for g in &gs {
            outcomes.push(create_generation_on(&mut tx, g).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
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
        let (ids, jobs) = b.jobs()?;
        let job_ids: Vec<Uuid> = PgStore::enqueue_many_in(&mut tx, jobs)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        insert_generations(&mut tx, b.owner, Some(batch_id), &b.rows(&ids, &job_ids)).await?;
        tx.commit().await?;
        Ok(BatchEnqueued::Created { job_ids })
    }
}
