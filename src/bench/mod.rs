//! `kiln bench`: no-op job throughput and enqueue->start latency of kiln on
//! PostgreSQL and SQLite, side by side with baselines measured in the same
//! run on the same server: a raw `SKIP LOCKED` loop and raw apalis 1.0
//! backends. Each measurement gets a throwaway database of its own, from
//! the same kit the tests use.
//!
//! A second table measures the HTTP API: real `kiln serve` (and `kiln
//! work`) child processes under load, next to a bare axum handler.
//!
//! Built only with the `bench` feature, which also brings in the apalis
//! baselines: none of this is in the production binary.

mod apalis;
mod api;
mod bulk;
mod kiln;
mod purge;
mod raw_sql;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Args;
use kiln_store::testing::TestDatabase;

use crate::config::Settings;
use kiln::Claims;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// No-op jobs per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u32,
    /// Enqueue->start samples per latency run.
    #[arg(long, default_value_t = 200)]
    pub samples: u32,
    /// The small claim batch: kiln's `batch_size` and the raw loop's batch.
    #[arg(long, default_value_t = 10)]
    pub batch_size: u32,
    /// The large claim batch: kiln's `max_batch_size` (claims grow to it
    /// under a backlog) and the raw loop's second batch.
    #[arg(long, default_value_t = 100)]
    pub max_batch_size: u32,
    /// Jobs run at once per worker process (at least the large batch, so
    /// a claim can fill it).
    #[arg(long, default_value_t = 128)]
    pub concurrency: u32,
    /// Finished rows present in the table for the history run.
    #[arg(long, default_value_t = 1_000_000)]
    pub finished_rows: u32,
    /// Jobs per bulk-insert run.
    #[arg(long, default_value_t = 100_000)]
    pub bulk_jobs: u32,
    /// Old access-log rows the retention purge deletes while claims are
    /// timed.
    #[arg(long, default_value_t = 100_000)]
    pub purge_rows: u32,
    /// Jobs queued while a worker's memory is sampled.
    #[arg(long, default_value_t = 1_000_000)]
    pub queued_jobs: u32,
    /// The Postgres server to create throwaway bench databases on.
    #[arg(
        long,
        env = "KILN_BENCH_POSTGRES_URL",
        // Loopback: TLS would only add its cost to kiln and every baseline.
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub postgres: String,
    #[arg(long)]
    pub skip_postgres: bool,
    #[arg(long)]
    pub skip_sqlite: bool,
    /// Skip the no-op throughput and pickup latency runs (the first table).
    #[arg(long)]
    pub skip_throughput: bool,
    /// Skip the bulk-insert and deep-queue runs (the second table).
    #[arg(long)]
    pub skip_capacity: bool,
    /// Leave out the HTTP API section.
    #[arg(long, conflicts_with = "only_api")]
    pub skip_api: bool,
    /// Only the HTTP API section.
    #[arg(long)]
    pub only_api: bool,
    /// Keep-alive connections the API load runs hold, each sending one
    /// request after the other.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_connections: u32,
    /// Accounts the API enqueue loads spread their connections over, in
    /// turn. Each account's enqueues wait for each other on its credit
    /// balance (one row lock on Postgres), so with as many accounts as
    /// connections (the default) each has one request in flight, as users
    /// do; fewer measures accounts with many requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_accounts: u32,
    /// Seconds each API load run is measured, after a 1 s warm-up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_seconds: u64,
    /// Sequential generations timed from enqueue until the client sees
    /// them succeeded.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub generation_samples: u32,
    /// Internal: serve the bare axum baseline of the status poll on this
    /// address until killed (the bench starts it as a child process).
    #[arg(long, hide = true)]
    pub serve_bare_axum: Option<SocketAddr>,
}

/// One line of the result table.
pub(crate) struct Row {
    database: &'static str,
    system: String,
    /// Jobs per claim: fixed, or `from→to` when claims grow.
    batch: String,
    /// The raw loop's batch this row is compared with.
    compare_batch: Option<u32>,
    throughput: Option<f64>,
    idle: Option<Percentiles>,
    load: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Percentiles {
    p50: Duration,
    p99: Duration,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
        })
    }
}

pub async fn run(_settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.serve_bare_axum {
        return api::serve_bare_axum(addr).await;
    }
    let mut rows = Vec::new();
    let mut figures = Vec::new();
    let throughput = !args.only_api && !args.skip_throughput;
    let capacity_runs = !args.only_api && !args.skip_capacity;
    if !args.skip_postgres {
        if throughput {
            rows.extend(postgres(&args).await?);
        }
        if capacity_runs {
            figures.extend(capacity(&args, Scratch::Postgres).await?);
        }
    }
    if !args.skip_sqlite {
        if throughput {
            rows.extend(sqlite(&args).await?);
        }
        if capacity_runs {
            figures.extend(capacity(&args, Scratch::Sqlite).await?);
        }
    }
    let api_rows = if args.skip_api {
        Vec::new()
    } else {
        api::rows(&args).await?
    };
    if throughput {
        print_table(&args, &rows);
    }
    if capacity_runs {
        print_figures(&figures);
    }
    if !args.skip_api {
        api::print_table(&args, &api_rows);
    }
    Ok(())
}

/// Which database a measurement gets a throwaway of.
#[derive(Debug, Clone, Copy)]
enum Scratch {
    Postgres,
    Sqlite,
}

impl Scratch {
    fn name(self) -> &'static str {
        match self {
            Scratch::Postgres => "postgres",
            Scratch::Sqlite => "sqlite",
        }
    }

    async fn create(self, args: &BenchArgs) -> anyhow::Result<TestDatabase> {
        match self {
            Scratch::Postgres => scratch_postgres(args).await,
            Scratch::Sqlite => scratch_sqlite(),
        }
    }
}

/// One line of the second table: a figure and what it is compared with.
struct Figure {
    database: &'static str,
    what: String,
    result: String,
    compared: String,
}

/// Bulk enqueue against the database's own insert, and a worker's memory
/// with a deep queue.
async fn capacity(args: &BenchArgs, db: Scratch) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let server = {
        let scratch = db.create(args).await?;
        bulk::server_side_insert(&scratch.url, args.bulk_jobs).await?
    };
    let server_rate = jobs_per_sec(args.bulk_jobs, server);
    for connections in [1, 4] {
        let scratch = db.create(args).await?;
        let took = bulk::store_bulk_insert(&scratch.url, args.bulk_jobs, connections).await?;
        eprintln!(
            "bulk insert {}, {connections} connection(s): {took:?}",
            db.name()
        );
        let rate = jobs_per_sec(args.bulk_jobs, took);
        figures.push(Figure {
            database: db.name(),
            what: format!(
                "store bulk insert (`enqueue_many`, {} jobs per call), {connections} connection{}",
                bulk::CHUNK,
                if connections > 1 { "s" } else { "" }
            ),
            result: format!("{rate:.0} jobs/s"),
            compared: format!(
                "{:.2}x the database inserting the same rows by itself ({server_rate:.0} jobs/s)",
                rate / server_rate
            ),
        });
    }
    let scratch = db.create(args).await?;
    let purge = purge::purge_under_claims(&scratch.url, args.purge_rows).await?;
    eprintln!("retention purge {}: {:?}", db.name(), purge.took);
    figures.push(Figure {
        database: db.name(),
        what: format!(
            "retention purge of {} old access-log rows (batches of 1000) while single jobs are claimed",
            purge.rows
        ),
        result: format!(
            "{:.0} rows/s ({:.1} s); claim p50 {} p99 {} during it",
            f64::from(purge.rows) / purge.took.as_secs_f64(),
            purge.took.as_secs_f64(),
            ms(purge.claims_during.p50),
            ms(purge.claims_during.p99),
        ),
        compared: format!(
            "claim p50 {} p99 {} with no purge running",
            ms(purge.claims_alone.p50),
            ms(purge.claims_alone.p99),
        ),
    });
    let scratch = db.create(args).await?;
    let claims = Claims {
        batch: args.batch_size,
        max_batch: args.max_batch_size,
    };
    let run_for = Duration::from_secs(10);
    let deep = bulk::deep_queue(&scratch.url, args, claims, args.queued_jobs, run_for).await?;
    let what = format!(
        "1 `kiln work` process, {} jobs queued, concurrency {}, {} s",
        args.queued_jobs,
        args.concurrency,
        run_for.as_secs()
    );
    figures.push(Figure {
        database: db.name(),
        what: format!("{what}: resident memory"),
        result: format!("{:.1} MB peak", deep.peak_rss as f64 / 1e6),
        compared: "aim < 100 MB".to_owned(),
    });
    figures.push(Figure {
        database: db.name(),
        what: format!("{what}: throughput"),
        result: format!("{:.0} jobs/s", deep.jobs_per_sec),
        compared: format!(
            "the first table's 10→100 row for 1 process, with {} queued",
            args.jobs
        ),
    });
    Ok(figures)
}

fn print_figures(figures: &[Figure]) {
    println!("\n| database | measurement | result | compared with |");
    println!("|---|---|---:|---|");
    for f in figures {
        println!(
            "| {} | {} | {} | {} |",
            f.database, f.what, f.result, f.compared
        );
    }
}

/// A throwaway database on the `--postgres` server, dropped with the value.
async fn scratch_postgres(args: &BenchArgs) -> anyhow::Result<TestDatabase> {
    TestDatabase::postgres_at(&args.postgres)
        .await
        .context("creating a bench database on the Postgres server of --postgres")
}

/// A throwaway SQLite file, removed with the value.
fn scratch_sqlite() -> anyhow::Result<TestDatabase> {
    TestDatabase::try_sqlite().context("creating a temporary directory for a SQLite bench file")
}

/// Writes every dirty page out before a timed run on Postgres, so no run
/// pays for a checkpoint (and the full-page images after it) that the data
/// loading of the one before started.
pub(crate) async fn checkpoint(url: &str) -> anyhow::Result<()> {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query("CHECKPOINT").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

fn jobs_per_sec(jobs: u32, took: Duration) -> f64 {
    f64::from(jobs) / took.as_secs_f64()
}

impl Row {
    fn new(database: &'static str, system: String, batch: String) -> Row {
        Row {
            database,
            system,
            batch,
            compare_batch: None,
            throughput: None,
            idle: None,
            load: None,
        }
    }

    fn compared_with(mut self, raw_batch: u32) -> Row {
        self.compare_batch = Some(raw_batch);
        self
    }

    fn measured(mut self, jobs: u32, took: Duration) -> Row {
        self.throughput = Some(jobs_per_sec(jobs, took));
        self
    }
}

fn processes_label(n: u32) -> String {
    format!("kiln, {n} worker process{}", if n > 1 { "es" } else { "" })
}

fn claims_label(claims: Claims) -> String {
    if claims.batch == claims.max_batch {
        claims.batch.to_string()
    } else {
        format!("{}→{}", claims.batch, claims.max_batch)
    }
}

async fn postgres(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let small = args.batch_size;
    let large = args.max_batch_size;
    let fixed = |b| Claims {
        batch: b,
        max_batch: b,
    };
    let growing = Claims {
        batch: small,
        max_batch: large,
    };
    let mut rows = Vec::new();
    // The claim path at the raw loop's batch sizes, then as kiln runs by
    // default (claims grow with the backlog), across worker processes.
    let mut runs = vec![(fixed(small), 1), (fixed(large), 1)];
    runs.extend([1, 2, 4].map(|p| (growing, p)));
    for (claims, processes) in runs {
        let db = scratch_postgres(args).await?;
        let took = kiln::throughput(&db.url, args, claims, processes).await?;
        eprintln!("kiln postgres, batch {claims:?}, {processes} process(es): {took:?}");
        rows.push(
            Row::new("postgres", processes_label(processes), claims_label(claims))
                .compared_with(claims.max_batch)
                .measured(args.jobs, took),
        );
    }
    {
        let db = scratch_postgres(args).await?;
        kiln::add_finished_rows(&db.url, args.finished_rows).await?;
        let took = kiln::throughput(&db.url, args, growing, 1).await?;
        eprintln!(
            "kiln postgres with {} finished rows: {took:?}",
            args.finished_rows
        );
        rows.push(
            Row::new(
                "postgres",
                format!(
                    "kiln, 1 worker process, {} finished rows present",
                    args.finished_rows
                ),
                claims_label(growing),
            )
            .compared_with(large)
            .measured(args.jobs, took),
        );
    }
    {
        let db = scratch_postgres(args).await?;
        let base = rows[2].throughput.unwrap_or(1000.0);
        let (idle, load) = kiln::latency(&db.url, args, growing, base).await?;
        rows[2].idle = Percentiles::of(idle);
        rows[2].load = Percentiles::of(load);
    }
    {
        let db = scratch_postgres(args).await?;
        let took = apalis::postgres_throughput(&db.url, args.jobs, args.concurrency).await?;
        eprintln!("apalis-postgres: {took:?}");
        let db = scratch_postgres(args).await?;
        let idle = apalis::postgres_pickup_latency(&db.url, args.samples).await?;
        let mut row = Row::new(
            "postgres",
            "apalis-postgres 1.0 (pub/sub + 100 ms poll)".to_owned(),
            apalis::BATCH_SIZE.to_string(),
        )
        .compared_with(apalis::BATCH_SIZE as u32)
        .measured(args.jobs, took);
        row.idle = Percentiles::of(idle);
        rows.push(row);
    }
    for batch in [small, large] {
        let db = scratch_postgres(args).await?;
        let took = raw_sql::postgres_skip_locked(&db.url, args.jobs, batch, 4).await?;
        eprintln!("raw SKIP LOCKED loop, batch {batch}: {took:?}");
        rows.push(
            Row::new(
                "postgres",
                "raw SKIP LOCKED loop, 4 connections".to_owned(),
                batch.to_string(),
            )
            .compared_with(batch)
            .measured(args.jobs, took),
        );
    }
    Ok(rows)
}

async fn sqlite(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let growing = Claims {
        batch: args.batch_size,
        max_batch: args.max_batch_size,
    };
    let mut rows = Vec::new();
    let db = scratch_sqlite()?;
    let took = kiln::throughput(&db.url, args, growing, 1).await?;
    eprintln!("kiln sqlite: {took:?}");
    rows.push(
        Row::new("sqlite", processes_label(1), claims_label(growing)).measured(args.jobs, took),
    );
    let db = scratch_sqlite()?;
    kiln::add_finished_rows(&db.url, args.finished_rows).await?;
    let took = kiln::throughput(&db.url, args, growing, 1).await?;
    eprintln!(
        "kiln sqlite with {} finished rows: {took:?}",
        args.finished_rows
    );
    rows.push(
        Row::new(
            "sqlite",
            format!(
                "kiln, 1 worker process, {} finished rows present",
                args.finished_rows
            ),
            claims_label(growing),
        )
        .measured(args.jobs, took),
    );
    let db = scratch_sqlite()?;
    let base = rows[0].throughput.unwrap_or(1000.0);
    let (idle, load) = kiln::latency(&db.url, args, growing, base).await?;
    rows[0].idle = Percentiles::of(idle);
    rows[0].load = Percentiles::of(load);

    let db = scratch_sqlite()?;
    let took = apalis::sqlite_throughput(&db.url, args.jobs, args.concurrency).await?;
    eprintln!("apalis-sqlite: {took:?}");
    let db = scratch_sqlite()?;
    let idle = apalis::sqlite_pickup_latency(&db.url, args.samples).await?;
    let mut row = Row::new(
        "sqlite",
        "apalis-sqlite 1.0 (update hook + 100 ms poll, synchronous=OFF)".to_owned(),
        apalis::BATCH_SIZE.to_string(),
    )
    .measured(args.jobs, took);
    row.idle = Percentiles::of(idle);
    rows.push(row);
    Ok(rows)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_table(args: &BenchArgs, rows: &[Row]) {
    println!(
        "\nkiln bench: {} no-op jobs per throughput run, concurrency {} per process, {} latency samples\n",
        args.jobs, args.concurrency, args.samples
    );
    println!(
        "| database | system | jobs per claim | jobs/s | vs raw loop (same batch) | vs apalis | idle p50 | idle p99 | loaded p50 | loaded p99 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    };
    for db in ["postgres", "sqlite"] {
        let of_db = || rows.iter().filter(move |r| r.database == db);
        let apalis = of_db()
            .find(|r| r.system.starts_with("apalis"))
            .and_then(|r| r.throughput);
        for r in of_db() {
            // The raw rows are compared with their own batch, so a row's
            // raw baseline is the raw row with the same comparison batch.
            let raw = of_db()
                .find(|o| o.system.starts_with("raw") && o.compare_batch == r.compare_batch)
                .and_then(|o| o.throughput);
            let p = |p: Option<Percentiles>, f: fn(&Percentiles) -> Duration| {
                p.as_ref().map_or("-".to_owned(), |p| ms(f(p)))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.database,
                r.system,
                r.batch,
                r.throughput.map_or("-".to_owned(), |t| format!("{t:.0}")),
                ratio(r.throughput, raw),
                ratio(r.throughput, apalis),
                p(r.idle, |p| p.p50),
                p(r.idle, |p| p.p99),
                p(r.load, |p| p.p50),
                p(r.load, |p| p.p99),
            );
        }
    }
}
