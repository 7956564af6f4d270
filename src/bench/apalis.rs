//! Raw apalis 1.0 SQL backends (`apalis-postgres`, `apalis-sqlite`) as the
//! outside baseline for `kiln bench`, measured in the same run and on the
//! same database server as kiln itself.
//!
//! Every run uses the backend exactly as apalis documents it, tuned the way a
//! careful apalis user would tune it for a no-op workload:
//!
//! - Wake-ups: `PostgresStorage::with_pubsub()` (a dedicated `LISTEN`
//!   connection on `apalis::job::insert`, fed by apalis's own `AFTER INSERT`
//!   trigger) and, on SQLite, `SqliteStorage::connect_with_callback` (an
//!   in-process `sqlite3_update_hook` on every pooled connection) fed to a
//!   `StreamStrategy` through `ready_chunks(batch_size)`, as in the
//!   apalis-sqlite README. Both are backed by a [`FALLBACK_POLL`] interval,
//!   as apalis's own examples do, because a notification can race the fetch
//!   it triggers (the SQLite hook even fires before the insert commits).
//! - [`BATCH_SIZE`] jobs per fetch; `lock_tasks(false)` as in apalis's own
//!   `basic.rs` (postgres) and `realtime.rs` (sqlite) examples: the fetch
//!   already stamps `lock_by`, so the separate per-job `Running` update is
//!   pure overhead; `persist_results` stays on (the default), otherwise
//!   apalis never marks a job done.
//! - `concurrency` is a semaphore layer equivalent to apalis's
//!   `.concurrency(n)` (tower's `ConcurrencyLimitLayer`, which needs the
//!   `tower` crate), in front of `.parallelize(tokio::spawn)` so handlers run
//!   on all runtime threads, as in apalis-postgres's `basic.rs`.
//! - Every run gets its own queue and worker name, so reusing a SQLite file
//!   cannot mix runs.
//! - Otherwise apalis defaults (heartbeat 30 s, one worker, JSON codec).
//!
//! Each public function gives up with an error after [`GIVE_UP`]; the worker
//! task is aborted on every exit path, so nothing keeps the runtime busy.

use std::{
    collections::HashMap,
    future::Future,
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use apalis_core::{
    backend::{
        TaskSink, TaskSinkError,
        ext::{
            BackendExt,
            poll_strategy::{PollWith, Strategy},
        },
    },
    error::{BoxDynError, WorkerError},
    layers::{Layer, Service},
    task::data::Data,
    worker::{builder::WorkerBuilder, context::WorkerContext, ext::parallelize::ParallelizeExt},
};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::{SqlitePool, SqliteStorage, callback::HookCallbackListener};
use futures::{StreamExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, postgres::PgPoolOptions, sqlite::SqliteConnectOptions};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tokio_util::sync::PollSemaphore;

/// Every run gives up after this long, so a bench can never hang.
const GIVE_UP: Duration = Duration::from_secs(600);

/// Jobs per fetch query. apalis's default is 10, but one apalis worker
/// fetches only when its buffer is empty and serialises fetches with its
/// result writes, so the batch bounds its rate: on the 2-core dev box,
/// postgres, concurrency 32, 5000 jobs: batch 10 ~1.5k jobs/s, 100 ~3k,
/// 1000 ~5k. 100 is the value of apalis-postgres's own `basic.rs` and
/// claims only ~3x the concurrency ahead (1000 would hoard jobs from other
/// workers; kiln's bench claims 10 at a time).
pub const BATCH_SIZE: usize = 100;

/// Poll interval behind the pub/sub or update-hook wake-ups: only matters
/// when a notification loses the race against the fetch it triggers.
const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// Rows per insert statement when filling the queue for a throughput run.
const PUSH_CHUNK: usize = 1000;

/// Gap between latency samples, matching kiln's own latency run.
const SAMPLE_GAP: Duration = Duration::from_millis(20);

/// Quiet time after warm-up before latency samples, so the idle worker is
/// really idle (and its `LISTEN` connection is up).
const SETTLE: Duration = Duration::from_millis(300);

/// Raw apalis-postgres: push `jobs` no-op jobs, then run one apalis worker
/// with `concurrency` parallel tasks until every job is done. Returns the
/// elapsed time of the run phase (from worker start until all done), not the
/// push phase.
///
/// "Done" means durably done: the clock stops once every handler has run
/// and the worker has stopped gracefully, which flushes apalis's last
/// batched result write (the worker start-up, registration and `LISTEN`
/// included, like kiln's in-process run). The `Done` rows are counted
/// afterwards, untimed, and a shortfall is an error.
pub async fn postgres_throughput(
    url: &str,
    jobs: u32,
    concurrency: u32,
) -> anyhow::Result<Duration> {
    within_deadline(
        "apalis-postgres throughput",
        pg_throughput(url, jobs, concurrency),
    )
    .await
}

/// Raw apalis-postgres idle pickup: a worker idles on an empty queue, then
/// `samples` jobs are pushed one at a time with ~20 ms gaps; returns each
/// job's enqueue->handler-start latency.
///
/// Pickup uses `PostgresStorage::with_pubsub()` (`LISTEN` on
/// `apalis::job::insert`, notified by apalis's insert trigger), the fastest
/// mechanism apalis-postgres 1.0 offers, with a [`FALLBACK_POLL`] interval
/// behind it. Latency runs from just before `TaskSink::push` (apalis's own
/// insert: a transaction with one `INSERT`) to the first statement of the
/// handler. One warm-up job runs first and is not counted; the worker's
/// concurrency is 1 (one job in flight at a time, so it makes no odds).
pub async fn postgres_pickup_latency(url: &str, samples: u32) -> anyhow::Result<Vec<Duration>> {
    within_deadline("apalis-postgres pickup latency", pg_pickup(url, samples)).await
}

/// Raw apalis-sqlite: as [`postgres_throughput`]. `url` is like
/// `sqlite:/tmp/x/apalis.db`; the file is created if missing.
///
/// The queue is filled through a plain pool; the worker then gets apalis's
/// own `SqliteStorage::connect_with_callback` pool (sqlx defaults: at most
/// 10 connections, `synchronous=FULL`) set up by `SqliteStorage::setup`
/// as its README does (WAL; its `synchronous=OFF` only reaches the one
/// connection it runs on), i.e. a worker starting on a full queue.
///
/// That order matters a lot: apalis-sqlite 1.0 writes results with
/// `UPDATE Jobs .. FROM json_each(?1) .. WHERE id = .. AND lock_by = ?2`,
/// and unless the planner knows `lock_by` is unselective it walks the
/// `lock_by` index (every row this worker has locked so far, re-reading
/// the JSON for each): quadratic, 2000 jobs ~550/s, 20000 ~90/s on the dev
/// box instead of ~10k/s. The `PRAGMA optimize` in `setup` gathers the
/// right statistics only when it runs over a non-empty table; a worker set
/// up on an empty queue, or a plain `ANALYZE` (its stat4 samples all have
/// `lock_by` NULL), gets the quadratic plan.
pub async fn sqlite_throughput(url: &str, jobs: u32, concurrency: u32) -> anyhow::Result<Duration> {
    within_deadline(
        "apalis-sqlite throughput",
        sqlite_run_throughput(url, jobs, concurrency),
    )
    .await
}

/// Raw apalis-sqlite idle pickup: as [`postgres_pickup_latency`], woken by
/// apalis-sqlite's update-hook listener (`connect_with_callback`), its
/// fastest pickup; the jobs are pushed through the same pool so the hook
/// sees them.
pub async fn sqlite_pickup_latency(url: &str, samples: u32) -> anyhow::Result<Vec<Duration>> {
    within_deadline("apalis-sqlite pickup latency", sqlite_pickup(url, samples)).await
}

/// The job: a small serde payload; `n` keys the latency bookkeeping.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Noop {
    n: u32,
}

/// The no-op handler; all it does is note when it started.
async fn noop(job: Noop, probe: Data<Arc<Probe>>) -> Result<(), BoxDynError> {
    probe.ran(job.n, Instant::now());
    Ok(())
}

/// What the handlers report back to the bench.
#[derive(Default)]
struct Probe {
    done: AtomicU32,
    /// Completions that wake the waiting bench.
    target: AtomicU32,
    progress: Notify,
    /// First start of each job, only kept for latency runs.
    starts: Option<Mutex<HashMap<u32, Instant>>>,
}

impl Probe {
    fn counting() -> Arc<Probe> {
        Arc::new(Probe::default())
    }

    fn timing() -> Arc<Probe> {
        Arc::new(Probe {
            starts: Some(Mutex::new(HashMap::new())),
            ..Probe::default()
        })
    }

    fn ran(&self, n: u32, at: Instant) {
        if let Some(starts) = &self.starts {
            starts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(n)
                .or_insert(at);
        }
        let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done >= self.target.load(Ordering::Acquire) {
            self.progress.notify_one();
        }
    }

    fn started(&self, n: u32) -> Option<Instant> {
        self.starts
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&n)
            .copied()
    }
}

/// A spawned apalis worker; aborted when dropped, so no early return can
/// leave it running.
struct Running {
    ctx: WorkerContext,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// Waits until `count` handlers have run, failing if the worker exits.
    async fn wait_for(&mut self, probe: &Probe, count: u32) -> anyhow::Result<()> {
        probe.target.store(count, Ordering::Release);
        while probe.done.load(Ordering::Acquire) < count {
            tokio::select! {
                () = probe.progress.notified() => {}
                exit = &mut self.handle => {
                    return Err(match exit {
                        Ok(Ok(())) => anyhow::anyhow!("stopped on its own"),
                        Ok(Err(e)) => anyhow::Error::new(e),
                        Err(e) => anyhow::Error::new(e),
                    })
                    .context(format!(
                        "the apalis worker exited with {} of {count} jobs run",
                        probe.done.load(Ordering::Acquire)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Graceful stop: in-flight jobs finish and apalis flushes its pending
    /// result writes before the worker returns.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.ctx.stop().context("stopping the apalis worker")?;
        (&mut self.handle)
            .await
            .context("the apalis worker task failed")?
            .context("the apalis worker failed while stopping")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Builds and spawns the worker: a macro because the backend types differ
/// and apalis's builder bounds are not worth spelling out.
macro_rules! spawn_worker {
    ($backend:expr, $concurrency:expr, $probe:expr) => {{
        let ctx = WorkerContext::new(&unique("kiln-bench-apalis"));
        let worker = WorkerBuilder::new(&ctx)
            .backend($backend)
            .data(Arc::clone($probe))
            .layer(ConcurrencyLimitLayer::new($concurrency))
            .parallelize(tokio::spawn)
            .build(noop);
        Running {
            ctx,
            handle: tokio::spawn(worker.run()),
        }
    }};
}

async fn pg_throughput(url: &str, jobs: u32, concurrency: u32) -> anyhow::Result<Duration> {
    ensure!(jobs > 0, "a throughput run needs at least one job");
    let pool = pg_pool(url).await?;
    let config = pg_config();
    let mut producer = PostgresStorage::<Noop>::new(&pool).with_config(config.clone());
    for chunk in job_chunks(jobs) {
        producer
            .push_bulk(chunk)
            .await
            .context("pushing jobs to apalis-postgres")?;
    }

    let probe = Probe::counting();
    let backend = PostgresStorage::<Noop>::new(&pool)
        .with_config(config.clone())
        .with_pubsub()
        .poll_with_interval(FALLBACK_POLL);
    let started = Instant::now();
    let mut worker = spawn_worker!(backend, concurrency, &probe);
    worker.wait_for(&probe, jobs).await?;
    worker.stop().await?;
    let took = started.elapsed();

    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
    )
    .bind(config.queue.as_ref())
    .fetch_one(&pool)
    .await
    .context("counting finished apalis-postgres jobs")?;
    ensure!(
        done == i64::from(jobs),
        "apalis-postgres marked {done} of {jobs} jobs done"
    );
    pool.close().await;
    Ok(took)
}

async fn pg_pickup(url: &str, samples: u32) -> anyhow::Result<Vec<Duration>> {
    let pool = pg_pool(url).await?;
    let config = pg_config();
    let mut producer = PostgresStorage::<Noop>::new(&pool).with_config(config.clone());
    let probe = Probe::timing();
    let backend = PostgresStorage::<Noop>::new(&pool)
        .with_config(config)
        .with_pubsub()
        .poll_with_interval(FALLBACK_POLL);
    let mut worker = spawn_worker!(backend, 1, &probe);
    let latencies = pickup(samples, &probe, &mut worker, &mut producer).await?;
    worker.stop().await?;
    pool.close().await;
    Ok(latencies)
}

async fn sqlite_run_throughput(url: &str, jobs: u32, concurrency: u32) -> anyhow::Result<Duration> {
    ensure!(jobs > 0, "a throughput run needs at least one job");
    let config = sqlite_config();
    {
        let pool = sqlite_create(url).await?;
        let mut producer = SqliteStorage::<Noop>::new(&pool).with_config(config.clone());
        for chunk in job_chunks(jobs) {
            producer
                .push_bulk(chunk)
                .await
                .context("pushing jobs to apalis-sqlite")?;
        }
        pool.close().await;
    }

    let (pool, listener) = sqlite_hooked(url).await?;
    let probe = Probe::counting();
    let backend = sqlite_backend(&pool, listener, &config);
    let started = Instant::now();
    let mut worker = spawn_worker!(backend, concurrency, &probe);
    worker.wait_for(&probe, jobs).await?;
    worker.stop().await?;
    let took = started.elapsed();

    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM Jobs WHERE job_type = ?1 AND status = 'Done'")
            .bind(config.queue.as_ref())
            .fetch_one(&pool)
            .await
            .context("counting finished apalis-sqlite jobs")?;
    ensure!(
        done == i64::from(jobs),
        "apalis-sqlite marked {done} of {jobs} jobs done"
    );
    pool.close().await;
    Ok(took)
}

async fn sqlite_pickup(url: &str, samples: u32) -> anyhow::Result<Vec<Duration>> {
    sqlite_create(url).await?.close().await;
    let (pool, listener) = sqlite_hooked(url).await?;
    let config = sqlite_config();
    let mut producer = SqliteStorage::<Noop>::new(&pool).with_config(config.clone());
    let probe = Probe::timing();
    let backend = sqlite_backend(&pool, listener, &config);
    let mut worker = spawn_worker!(backend, 1, &probe);
    let latencies = pickup(samples, &probe, &mut worker, &mut producer).await?;
    worker.stop().await?;
    pool.close().await;
    Ok(latencies)
}

/// The shared latency procedure: a warm-up job (n = 0, proves the worker
/// is live), [`SETTLE`] of idle, then `samples` single pushes
/// [`SAMPLE_GAP`] apart.
async fn pickup<P, Kind>(
    samples: u32,
    probe: &Probe,
    worker: &mut Running,
    producer: &mut P,
) -> anyhow::Result<Vec<Duration>>
where
    P: TaskSink<Noop, Kind>,
    TaskSinkError<P::Error>: std::error::Error + Send + Sync + 'static,
{
    producer
        .push(Noop { n: 0 })
        .await
        .context("pushing the warm-up job")?;
    worker.wait_for(probe, 1).await?;
    tokio::time::sleep(SETTLE).await;

    let mut pushed = Vec::with_capacity(samples as usize);
    for n in 1..=samples {
        pushed.push((n, Instant::now()));
        producer
            .push(Noop { n })
            .await
            .with_context(|| format!("pushing latency sample {n}"))?;
        tokio::time::sleep(SAMPLE_GAP).await;
    }
    worker.wait_for(probe, samples + 1).await?;

    pushed
        .into_iter()
        .map(|(n, at)| {
            let started = probe
                .started(n)
                .with_context(|| format!("no start recorded for latency sample {n}"))?;
            Ok(started.saturating_duration_since(at))
        })
        .collect()
}

fn pg_config() -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(unique("kiln-bench"))
        .batch_size(BATCH_SIZE)
        .lock_tasks(false)
}

fn sqlite_config() -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(unique("kiln-bench"))
        .batch_size(BATCH_SIZE)
        .lock_tasks(false)
}

/// A fresh database: apalis-postgres's own migrations (schema `apalis`).
async fn pg_pool(url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .context("connecting to the apalis-postgres bench database")?;
    // apalis's own migration creates it as well; doing it first gives a
    // clear error if the role may not.
    sqlx::query("CREATE EXTENSION IF NOT EXISTS hstore")
        .execute(&pool)
        .await
        .context("creating the hstore extension apalis-postgres needs")?;
    PostgresStorage::setup(&pool)
        .await
        .context("running apalis-postgres migrations")?;
    Ok(pool)
}

/// Creates the database file if missing (apalis's hooked pool opens
/// without `create_if_missing`) and runs apalis-sqlite's migrations.
async fn sqlite_create(url: &str) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("parsing SQLite url {url}"))?
        .create_if_missing(true);
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the SQLite bench", dir.display()))?;
    }
    let pool = SqlitePool::connect_with(options)
        .await
        .with_context(|| format!("opening the SQLite database {url}"))?;
    SqliteStorage::setup(&pool)
        .await
        .context("running apalis-sqlite setup and migrations")?;
    Ok(pool)
}

/// apalis's own update-hooked pool, set up as its README does (`setup`
/// again: its pragmas are per connection).
async fn sqlite_hooked(url: &str) -> anyhow::Result<(SqlitePool, HookCallbackListener)> {
    let (pool, listener) =
        SqliteStorage::connect_with_callback(url).context("opening the apalis-sqlite pool")?;
    SqliteStorage::setup(&pool)
        .await
        .context("running apalis-sqlite setup")?;
    Ok((pool, listener))
}

/// The update-hook wake-ups plus fallback poll, as in the apalis-sqlite
/// README's event-driven example.
fn sqlite_backend(
    pool: &SqlitePool,
    listener: HookCallbackListener,
    config: &apalis_sqlite::Config,
) -> PollWith<SqliteStorage<Noop>, Strategy> {
    let strategy = Strategy::new()
        .stream(listener.ready_chunks(config.batch_size))
        .interval(FALLBACK_POLL);
    SqliteStorage::<Noop>::new(pool)
        .with_config(config.clone())
        .poll_with_strategy(strategy)
}

/// The throughput run's jobs, [`PUSH_CHUNK`] per `push_bulk` (one insert
/// transaction each).
fn job_chunks(jobs: u32) -> Vec<Vec<Noop>> {
    let all: Vec<Noop> = (1..=jobs).map(|n| Noop { n }).collect();
    all.chunks(PUSH_CHUNK).map(<[Noop]>::to_vec).collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

async fn within_deadline<T>(
    what: &str,
    run: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(GIVE_UP, run).await {
        Ok(result) => result.with_context(|| format!("{what} bench")),
        Err(_) => bail!("{what} bench did not finish in {GIVE_UP:?}"),
    }
}

/// Caps in-flight jobs at `concurrency`, like apalis's `.concurrency(n)`
/// (tower's `ConcurrencyLimit`, same semaphore-permit-per-call design),
/// without adding the `tower` crate.
struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    fn new(concurrency: u32) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            semaphore: PollSemaphore::new(Arc::clone(&self.permits)),
            permit: None,
        }
    }
}

struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: PollSemaphore,
    /// Taken in `poll_ready`, moved into the call's future in `call`.
    permit: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxDynError>> {
        if self.permit.is_none() {
            match self.semaphore.poll_acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(permit)) => self.permit = Some(permit),
                Poll::Ready(None) => {
                    return Poll::Ready(Err("concurrency limit semaphore closed".into()));
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = self.permit.take();
        let call = self.inner.call(req);
        Box::pin(async move {
            let out = call.await.map_err(Into::into);
            drop(permit);
            out
        })
    }
}
