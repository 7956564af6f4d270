//! The retention purge under load: how fast it deletes a backlog of old
//! access-log rows in its bounded batches, and what that does to claims of
//! another queue meanwhile (each batch is its own short statement, so a
//! claim should wait at most for one batch, never for the whole purge).

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use kiln_jobs::{DataClass, Probe};
use kiln_store::{NewJob, Store};

use super::{Percentiles, kiln::open};

/// Rows per purge statement, as the `retention_purge` handler uses.
const BATCH: u32 = 1000;

pub struct PurgeFigures {
    pub rows: u32,
    pub took: Duration,
    pub claims_alone: Percentiles,
    pub claims_during: Percentiles,
}

/// Loads `rows` access-log rows 200 days old, samples the latency of
/// single claims on the probe's queue alone, then again while the purge
/// deletes the rows.
pub async fn purge_under_claims(url: &str, rows: u32) -> anyhow::Result<PurgeFigures> {
    let store = open(url).await?;
    load_old_access_log(url, rows).await?;
    super::checkpoint(url).await?;
    let claims_alone = claim_latencies(&store, None).await?;
    let purge = {
        let store = store.clone();
        tokio::spawn(async move {
            let cutoff = Utc::now() - TimeDelta::days(180);
            let started = Instant::now();
            let mut purged = 0;
            loop {
                let n = store.purge(DataClass::AccessLog, cutoff, BATCH).await?;
                purged += n;
                if n < u64::from(BATCH) {
                    return anyhow::Ok((purged, started.elapsed()));
                }
            }
        })
    };
    let claims_during = claim_latencies(&store, Some(&purge)).await?;
    let (purged, took) = purge.await??;
    anyhow::ensure!(
        purged == u64::from(rows),
        "the purge deleted {purged} of {rows} rows"
    );
    Ok(PurgeFigures {
        rows,
        took,
        claims_alone: claims_alone.ok_or_else(|| anyhow::anyhow!("no claim was sampled"))?,
        claims_during: claims_during.ok_or_else(|| anyhow::anyhow!("no claim was sampled"))?,
    })
}

/// Enqueue one probe, time the claim that takes it, complete it; 200
/// times, or while `until` runs.
async fn claim_latencies(
    store: &Store,
    until: Option<&tokio::task::JoinHandle<anyhow::Result<(u64, Duration)>>>,
) -> anyhow::Result<Option<Percentiles>> {
    let queues = vec![<Probe as kiln_jobs::Job>::QUEUE.to_owned()];
    let mut samples = Vec::new();
    loop {
        match until {
            Some(purge) if purge.is_finished() => break,
            None if samples.len() >= 200 => break,
            _ => {}
        }
        store.enqueue(NewJob::of(&Probe::default())?).await?;
        let started = Instant::now();
        let claimed = store
            .claim("bench-purge", &queues, 1, Duration::from_secs(30))
            .await?;
        samples.push(started.elapsed());
        let done: Vec<_> = claimed
            .iter()
            .map(|j| kiln_store::Completion {
                lease: j.lease,
                result: serde_json::json!({}),
            })
            .collect();
        store.complete(&done).await?;
    }
    Ok(Percentiles::of(samples))
}

/// `rows` access-log entries 200 days old, written by the database itself.
async fn load_old_access_log(url: &str, rows: u32) -> anyhow::Result<()> {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query(
            "INSERT INTO access_log (event, ip, user_agent, created_at)
             SELECT 'login', '203.0.113.1', 'bench', now() - interval '200 days'
             FROM generate_series(1, $1)",
        )
        .bind(i64::from(rows))
        .execute(&pool)
        .await?;
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let old = (Utc::now() - TimeDelta::days(200)).timestamp_millis();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO access_log (event, ip, user_agent, created_at)
             SELECT 'login', '203.0.113.1', 'bench', ?2 FROM n",
        )
        .bind(i64::from(rows))
        .bind(old)
        .execute(&pool)
        .await?;
        pool.close().await;
    }
    Ok(())
}
