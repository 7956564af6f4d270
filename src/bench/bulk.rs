//! Enqueueing in bulk and a worker's memory with a deep queue: the store's
//! bulk insert against the database inserting the same rows by itself,
//! and the resident memory of a `kiln work` process while a million jobs
//! wait.

use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_jobs::Probe;
use kiln_store::{JobState, NewJob};

use super::kiln::{Claims, open, spawn_worker_processes, stop_worker_processes};
use super::{BenchArgs, checkpoint};

/// Jobs per `enqueue_many` call: one statement on Postgres.
pub const CHUNK: u32 = 1000;

/// Time to insert `jobs` no-op jobs through `Store::enqueue_many`, `CHUNK`
/// at a time, from `connections` tasks at once.
pub async fn store_bulk_insert(url: &str, jobs: u32, connections: u32) -> anyhow::Result<Duration> {
    let store = open(url).await?;
    let chunks = jobs.div_ceil(CHUNK);
    // Built before the clock starts: the store's cost, not serde's.
    let batch = || {
        (0..CHUNK)
            .map(|_| NewJob::of(&Probe::default()))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut prepared = Vec::with_capacity(chunks as usize);
    for _ in 0..chunks {
        prepared.push(batch()?);
    }
    checkpoint(url).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = prepared.len().div_ceil(connections.max(1) as usize).max(1);
    while !prepared.is_empty() {
        let mine: Vec<Vec<NewJob>> = prepared.drain(..per_task.min(prepared.len())).collect();
        let store = store.clone();
        tasks.spawn(async move {
            for chunk in mine {
                store.enqueue_many(chunk).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("bulk insert task")??;
    }
    Ok(started.elapsed())
}

/// Time for the database to insert the same rows by itself, generated in
/// one statement: no client, no encoding, no round trips. What the table
/// and its indexes allow.
pub async fn server_side_insert(url: &str, jobs: u32) -> anyhow::Result<Duration> {
    open(url).await?; // migrated
    checkpoint(url).await?;
    let payload = serde_json::to_string(&Probe::default())?;
    let started = Instant::now();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, queue, payload, state, max_attempts, run_at)
             SELECT gen_random_uuid(), 'probe', 'default', $2::jsonb, 'available', 3, now()
             FROM generate_series(1, $1::int)",
        )
        .bind(jobs as i32)
        .bind(&payload)
        .execute(&pool)
        .await?;
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await?;
        sqlx::query(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
             INSERT INTO jobs (id, kind, queue, payload, state, max_attempts, run_at,
                               created_at, updated_at)
             SELECT printf('00000000-0000-7000-8000-%012x', n), 'probe', 'default', ?2,
                    'available', 3, 0, 0, 0
             FROM g",
        )
        .bind(jobs)
        .bind(&payload)
        .execute(&pool)
        .await?;
        pool.close().await;
    }
    Ok(started.elapsed())
}

/// One `kiln work` process with a deep queue.
pub struct DeepQueue {
    /// The most resident memory seen, in bytes.
    pub peak_rss: u64,
    /// Jobs it finished per second meanwhile.
    pub jobs_per_sec: f64,
}

/// Runs one `kiln work` process for `run_for` while `queued` jobs wait in
/// its queue: its resident memory (sampled from `/proc` every 50 ms) and
/// the rate at which it works through them.
pub async fn deep_queue(
    url: &str,
    args: &BenchArgs,
    claims: Claims,
    queued: u32,
    run_for: Duration,
) -> anyhow::Result<DeepQueue> {
    store_bulk_insert(url, queued, 4).await?;
    let store = open(url).await?;
    let queue = NewJob::of(&Probe::default())?.queue;
    // Held until the process is up, so its start-up is not timed.
    store.pause_queue(&queue).await?;
    let mut children = spawn_worker_processes(url, args, claims, 1)?;
    let pid = children
        .first()
        .and_then(|c| c.id())
        .context("the worker process has no pid")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    store.resume_queue(&queue).await?;
    let started = Instant::now();
    let mut peak_rss = 0;
    while started.elapsed() < run_for {
        peak_rss = peak_rss.max(resident_bytes(pid)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_worker_processes(&mut children).await;
    let took = started.elapsed();
    let finished: i64 = store
        .queue_stats()
        .await?
        .iter()
        .filter(|s| s.state == JobState::Succeeded)
        .map(|s| s.count)
        .sum();
    Ok(DeepQueue {
        peak_rss,
        jobs_per_sec: finished as f64 / took.as_secs_f64(),
    })
}

/// `VmRSS` of a process, from `/proc/<pid>/status`.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS line in /proc/<pid>/status")?;
    Ok(kib * 1024)
}
