//! `kiln bench`: no-op job throughput and enqueue->start latency of kiln on
//! PostgreSQL and SQLite, side by side with baselines measured in the same
//! run on the same server: a raw `SKIP LOCKED` loop and raw apalis 1.0
//! backends. Each measurement gets a throwaway database of its own, from
//! the same kit the tests use.
//!
//! Built only with the `bench` feature, which also brings in the apalis
//! baselines: none of this is in the production binary.

mod apalis;
mod kiln;
mod raw_sql;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_store::testing::TestDatabase;

use crate::config::Settings;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// No-op jobs per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u32,
    /// Enqueue->start samples per latency run.
    #[arg(long, default_value_t = 200)]
    pub samples: u32,
    /// Jobs per claim query (kiln and the raw loop use the same).
    #[arg(long, default_value_t = 10)]
    pub batch_size: u32,
    /// Jobs run at once per worker process.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// The Postgres server to create throwaway bench databases on.
    #[arg(
        long,
        env = "KILN_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    #[arg(long)]
    pub skip_postgres: bool,
    #[arg(long)]
    pub skip_sqlite: bool,
}

/// One line of the result table.
pub(crate) struct Row {
    database: &'static str,
    system: String,
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
    let mut rows = Vec::new();
    if !args.skip_postgres {
        rows.extend(postgres(&args).await?);
    }
    if !args.skip_sqlite {
        rows.extend(sqlite(&args).await?);
    }
    print_table(&args, &rows);
    Ok(())
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

fn jobs_per_sec(jobs: u32, took: Duration) -> f64 {
    f64::from(jobs) / took.as_secs_f64()
}

async fn postgres(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for processes in [1, 2] {
        let db = scratch_postgres(args).await?;
        let took = kiln::throughput(&db.url, args, processes).await?;
        eprintln!("kiln postgres, {processes} worker process(es): {took:?}");
        rows.push(Row {
            database: "postgres",
            system: format!(
                "kiln, {processes} worker process{}",
                if processes > 1 { "es" } else { "" }
            ),
            throughput: Some(jobs_per_sec(args.jobs, took)),
            idle: None,
            load: None,
        });
    }
    {
        let db = scratch_postgres(args).await?;
        let (idle, load) =
            kiln::latency(&db.url, args, rows[0].throughput.unwrap_or(1000.0)).await?;
        rows[0].idle = Percentiles::of(idle);
        rows[0].load = Percentiles::of(load);
    }
    {
        let db = scratch_postgres(args).await?;
        let took = apalis::postgres_throughput(&db.url, args.jobs, args.concurrency).await?;
        eprintln!("apalis-postgres: {took:?}");
        let db = scratch_postgres(args).await?;
        let idle = apalis::postgres_pickup_latency(&db.url, args.samples).await?;
        rows.push(Row {
            database: "postgres",
            system: "apalis-postgres 1.0 (pub/sub + 100 ms poll, batch 100)".to_owned(),
            throughput: Some(jobs_per_sec(args.jobs, took)),
            idle: Percentiles::of(idle),
            load: None,
        });
    }
    {
        let db = scratch_postgres(args).await?;
        let took = raw_sql::postgres_skip_locked(&db.url, args.jobs, args.batch_size, 4).await?;
        eprintln!("raw SKIP LOCKED loop: {took:?}");
        rows.push(Row {
            database: "postgres",
            system: format!(
                "raw SKIP LOCKED loop, 4 connections, batch {}",
                args.batch_size
            ),
            throughput: Some(jobs_per_sec(args.jobs, took)),
            idle: None,
            load: None,
        });
    }
    Ok(rows)
}

async fn sqlite(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let db = scratch_sqlite()?;
    let took = kiln::throughput(&db.url, args, 1).await?;
    eprintln!("kiln sqlite: {took:?}");
    rows.push(Row {
        database: "sqlite",
        system: "kiln, 1 worker process".to_owned(),
        throughput: Some(jobs_per_sec(args.jobs, took)),
        idle: None,
        load: None,
    });
    // The same again on top of the finished rows of the first run: the rate
    // must not drop as history accumulates.
    let took = kiln::throughput(&db.url, args, 1).await?;
    rows.push(Row {
        database: "sqlite",
        system: format!(
            "kiln, 1 worker process, {} finished rows present",
            args.jobs
        ),
        throughput: Some(jobs_per_sec(args.jobs, took)),
        idle: None,
        load: None,
    });
    let db = scratch_sqlite()?;
    let (idle, load) = kiln::latency(&db.url, args, rows[0].throughput.unwrap_or(1000.0)).await?;
    rows[0].idle = Percentiles::of(idle);
    rows[0].load = Percentiles::of(load);

    let db = scratch_sqlite()?;
    let took = apalis::sqlite_throughput(&db.url, args.jobs, args.concurrency).await?;
    eprintln!("apalis-sqlite: {took:?}");
    let db = scratch_sqlite()?;
    let idle = apalis::sqlite_pickup_latency(&db.url, args.samples).await?;
    rows.push(Row {
        database: "sqlite",
        system: "apalis-sqlite 1.0 (update hook + 100 ms poll, batch 100)".to_owned(),
        throughput: Some(jobs_per_sec(args.jobs, took)),
        idle: Percentiles::of(idle),
        load: None,
    });
    Ok(rows)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_table(args: &BenchArgs, rows: &[Row]) {
    println!(
        "\nkiln bench: {} no-op jobs per throughput run, batch {}, concurrency {} per process, {} latency samples\n",
        args.jobs, args.batch_size, args.concurrency, args.samples
    );
    println!(
        "| database | system | jobs/s | vs kiln (1 process) | idle p50 | idle p99 | loaded p50 | loaded p99 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for db in ["postgres", "sqlite"] {
        let kiln = rows
            .iter()
            .find(|r| r.database == db)
            .and_then(|r| r.throughput);
        for r in rows.iter().filter(|r| r.database == db) {
            let tput = r.throughput.map_or("-".to_owned(), |t| format!("{t:.0}"));
            let ratio = match (r.throughput, kiln) {
                (Some(t), Some(k)) if k > 0.0 => format!("{:.2}x", t / k),
                _ => "-".to_owned(),
            };
            let p = |p: Option<Percentiles>, f: fn(&Percentiles) -> Duration| {
                p.as_ref().map_or("-".to_owned(), |p| ms(f(p)))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.database,
                r.system,
                tput,
                ratio,
                p(r.idle, |p| p.p50),
                p(r.idle, |p| p.p99),
                p(r.load, |p| p.p50),
                p(r.load, |p| p.p99),
            );
        }
    }
}
