//! kiln itself, measured the way it runs: workers claim from the jobs
//! table, run a no-op `probe`, and write outcomes in batches.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use kiln_jobs::{Job, Probe};
use kiln_store::{ConnectOptions, JobState, NewJob, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::BenchArgs;

const GIVE_UP: Duration = Duration::from_secs(600);

pub(super) async fn open(url: &str) -> anyhow::Result<Store> {
    let store = kiln_store::connect(&ConnectOptions {
        url: url.to_owned(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 8,
        wait: false,
        session_cache: std::time::Duration::ZERO,
        // Throwaway databases, and the keys the `kiln work` children get
        // too (a process with other keys is refused).
        pii: kiln_store::testing::test_pii(),
    })
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// How kiln claims in one run: `batch` jobs per claim while the queue
/// keeps up, growing to `max_batch` under a backlog.
#[derive(Debug, Clone, Copy)]
pub struct Claims {
    pub batch: u32,
    pub max_batch: u32,
}

fn worker_config(args: &BenchArgs, claims: Claims) -> kiln_workers::WorkerConfig {
    kiln_workers::WorkerConfig {
        concurrency: args.concurrency,
        batch_size: claims.batch,
        max_batch_size: claims.max_batch,
        ..Default::default()
    }
}

async fn succeeded(store: &Store) -> anyhow::Result<i64> {
    Ok(store
        .queue_stats()
        .await?
        .iter()
        .filter(|s| s.state == JobState::Succeeded)
        .map(|s| s.count)
        .sum())
}

/// Waits for `target` succeeded jobs in the database. Polled every 100 ms:
/// a tighter loop of counting queries would take CPU from the workers.
async fn wait_for_succeeded(store: &Store, target: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    while succeeded(store).await? < target {
        anyhow::ensure!(
            started.elapsed() < GIVE_UP,
            "bench run did not finish in {GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Successes recorded by in-process workers so far: the completer counts
/// a job only once its success is written, so this is as exact as the
/// database and costs no query.
fn probes_recorded() -> u64 {
    kiln_store::metrics::metrics()
        .jobs_finished
        .with_label_values(&[Probe::KIND, "succeeded"])
        .get()
}

async fn wait_for_recorded(target: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while probes_recorded() < target {
        anyhow::ensure!(
            started.elapsed() < GIVE_UP,
            "bench run did not finish in {GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn enqueue_noops(store: &Store, n: u32) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1000);
        let jobs = (0..chunk)
            .map(|_| NewJob::of(&Probe::default()))
            .collect::<Result<Vec<_>, _>>()?;
        ids.extend(store.enqueue_many(jobs).await?);
        left -= chunk;
    }
    Ok(ids)
}

/// In-process workers: the only way on SQLite (one process owns the file;
/// wake-ups are in-process), and the 1-process case on Postgres.
fn spawn_in_process(
    store: &Store,
    args: &BenchArgs,
    claims: Claims,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let config = worker_config(args, claims);
    let deps = kiln_workers::handlers::Deps::dev(kiln_store::Objects::memory(), Vec::new());
    let registry = kiln_workers::handlers::registry(&Default::default(), &deps);
    let handle = tokio::spawn(kiln_workers::run(
        store.clone(),
        registry,
        config,
        "bench-worker".to_owned(),
        stop.clone(),
    ));
    let handle = tokio::spawn(async move {
        if let Ok(Err(e)) = handle.await {
            eprintln!("bench worker failed: {e}");
        }
    });
    (stop, handle)
}

/// Adds `rows` finished jobs, a day old, in one statement: the history a
/// busy deployment keeps for its retention period. The claim path must not
/// slow down for it.
pub async fn add_finished_rows(url: &str, rows: u32) -> anyhow::Result<()> {
    open(url).await?; // migrated
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        // Yesterday's partition, as a running deployment would have made it.
        sqlx::query(
            "SELECT kiln_ensure_finished_partitions((now() AT TIME ZONE 'UTC')::date - 1, 0)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO finished_jobs (id, kind, queue, payload, state, max_attempts, attempt,
                               run_at, started_at, finished_at, result, progress, created_at,
                               updated_at)
             SELECT lpad(to_hex(g), 32, '0')::uuid, 'probe', 'default', '{}', 'succeeded', 3, 1,
                    now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
                    '{}', 100, now() - interval '1 day', now() - interval '1 day'
             FROM generate_series(1, $1::int) AS g",
        )
        .bind(rows as i32)
        .execute(&pool)
        .await?;
        sqlx::query("VACUUM ANALYZE finished_jobs")
            .execute(&pool)
            .await?;
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await?;
        sqlx::query(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
             INSERT INTO finished_jobs (id, kind, queue, payload, state, max_attempts, attempt,
                               run_at, started_at, finished_at, result, progress, created_at,
                               updated_at)
             SELECT printf('00000000-0000-0000-0000-%012x', n), 'probe', 'default', '{}',
                    'succeeded', 3, 1, 0, 0, 0, '{}', 100, 0, 0
             FROM g",
        )
        .bind(rows)
        .execute(&pool)
        .await?;
        pool.close().await;
    }
    Ok(())
}

/// Time to run `args.jobs` queued no-op jobs with `processes` workers.
pub async fn throughput(
    url: &str,
    args: &BenchArgs,
    claims: Claims,
    processes: u32,
) -> anyhow::Result<Duration> {
    let store = open(url).await?;
    let before = succeeded(&store).await?;
    let queue = Probe::default();
    let queue_name = NewJob::of(&queue)?.queue;
    enqueue_noops(&store, args.jobs).await?;
    super::checkpoint(url).await?;
    let target = before + i64::from(args.jobs);

    if processes == 1 {
        let target = probes_recorded() + u64::from(args.jobs);
        let started = Instant::now();
        let (stop, handle) = spawn_in_process(&store, args, claims);
        wait_for_recorded(target).await?;
        let took = started.elapsed();
        stop.cancel();
        let _ = handle.await;
        return Ok(took);
    }

    // Separate `kiln work` processes. Hold the queue until they are up so
    // process start-up is not timed.
    store.pause_queue(&queue_name).await?;
    let mut children = spawn_worker_processes(url, args, claims, processes)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    store.resume_queue(&queue_name).await?;
    wait_for_succeeded(&store, target).await?;
    let took = started.elapsed();
    stop_worker_processes(&mut children).await;
    Ok(took)
}

/// Starts `processes` `kiln work` processes on `url`, configured as `args`
/// and `claims` say.
pub(super) fn spawn_worker_processes(
    url: &str,
    args: &BenchArgs,
    claims: Claims,
    processes: u32,
) -> anyhow::Result<Vec<tokio::process::Child>> {
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut children = Vec::new();
    for _ in 0..processes {
        let child = tokio::process::Command::new(&exe)
            .arg("work")
            .env("KILN_DATABASE_URL", url)
            .env("KILN_METRICS_ADDR", "127.0.0.1:0")
            .env("KILN_WORKER_CONCURRENCY", args.concurrency.to_string())
            .env("KILN_WORKER_BATCH_SIZE", claims.batch.to_string())
            .env("KILN_WORKER_MAX_BATCH_SIZE", claims.max_batch.to_string())
            .env("KILN_LOG_LEVEL", "warn")
            .env(
                "KILN_ENCRYPTION_KEYS",
                format!("{{k1=\"{}\"}}", kiln_store::testing::TEST_PII_KEY),
            )
            .env(
                "KILN_ENCRYPTION_INDEX_KEY",
                kiln_store::testing::TEST_INDEX_KEY,
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a `kiln work` process")?;
        children.push(child);
    }
    Ok(children)
}

/// Stops worker processes as an operator would (SIGTERM) and waits for them.
pub(super) async fn stop_worker_processes(children: &mut Vec<tokio::process::Child>) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for mut child in children.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
}

/// Enqueue->start latency of single jobs to an idle worker, then under a
/// steady load of half the measured throughput.
pub async fn latency(
    url: &str,
    args: &BenchArgs,
    claims: Claims,
    throughput: f64,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let store = open(url).await?;
    let (stop, handle) = spawn_in_process(&store, args, claims);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut idle_ids = Vec::new();
    for _ in 0..args.samples {
        idle_ids.push(store.enqueue(NewJob::of(&Probe::default())?).await?.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = waits(&store, &idle_ids).await?;

    // Half the throughput, in a batch every 10 ms, for about 3 seconds.
    let per_tick = ((throughput * 0.5) / 100.0).max(1.0) as u32;
    let mut load_ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..300 {
        tick.tick().await;
        load_ids.extend(enqueue_noops(&store, per_tick).await?);
    }
    let load = waits(&store, &load_ids).await?;
    stop.cancel();
    let _ = handle.await;
    Ok((idle, load))
}

/// Each job's wait from due to started, read from the database once all
/// have started.
async fn waits(store: &Store, ids: &[Uuid]) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut waits = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let job = store.get(*id).await?.context("bench job vanished")?;
            if let Some(at) = job.started_at {
                waits.push((at - job.run_at).to_std().unwrap_or_default());
                break;
            }
            anyhow::ensure!(started.elapsed() < GIVE_UP, "bench job never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(waits)
}
