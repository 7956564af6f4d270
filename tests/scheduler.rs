//! `kiln schedule` replicas on one PostgreSQL, as operators run them: each
//! slot of a plan fires once however many replicas run, and a scheduler
//! that was down fires one catch-up slot when it starts, not a burst.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Kiln, kiln};
use kiln_jobs::{Job, RetentionPurge};
use kiln_store::testing::TestDatabase;
use nix::sys::signal::Signal;

/// Every two seconds.
const PLAN: &str = "*/2 * * * * *";

fn scheduler(db: &TestDatabase) -> Kiln {
    kiln(&["schedule"])
        .database(&db.url)
        .env("KILN_SCHEDULER_RETENTION_PURGE_CRON", PLAN)
        .spawn()
}

fn worker(db: &TestDatabase) -> Kiln {
    kiln(&["work"]).database(&db.url).spawn()
}

/// The slot (unix seconds) of every retention purge job, sorted, with
/// repeats kept: a slot fired twice shows twice.
async fn fired_slots(db: &TestDatabase) -> Vec<i64> {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM jobs WHERE kind = $1
         UNION ALL SELECT idempotency_key FROM finished_jobs WHERE kind = $1",
    )
    .bind(RetentionPurge::KIND)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut slots: Vec<i64> = keys
        .iter()
        .map(|k| {
            k.strip_prefix("retention_purge:")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a plan:slot key: {k}"))
        })
        .collect();
    slots.sort();
    slots
}

/// `kiln_cron_fires_total{plan="retention_purge"}` of one process.
async fn fires(k: &Kiln) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", k.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_cron_fires_total{plan=\"retention_purge\"} "))
        .unwrap_or_else(|| panic!("no kiln_cron_fires_total in:\n{text}"))
        .parse()
        .unwrap()
}

async fn stop(mut k: Kiln) {
    k.signal(Signal::SIGTERM);
    let status = k.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", k.log_text());
}

async fn wait_for_slots(db: &TestDatabase, n: usize) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let slots = fired_slots(db).await;
        if slots.len() >= n {
            return slots;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {slots:?} fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_every_slot_of_a_minute_exactly_once() {
    let db = TestDatabase::postgres().await;
    // Migrated before any process starts, so the test can read the tables.
    db.store().await.unwrap();
    let work = worker(&db);
    let replicas: Vec<Kiln> = (0..3).map(|_| scheduler(&db)).collect();
    work.wait_healthy().await;
    for r in &replicas {
        r.wait_healthy().await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Counted and stopped between two slots (a slot is each even second;
    // this is 1.1 s after one), so no slot fires after the count and
    // before the stop.
    let now = Utc::now();
    let into_pair = (now.timestamp() % 2) * 1000 + i64::from(now.timestamp_subsec_millis());
    let wait = (1100 - into_pair).rem_euclid(2000);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    let mut fired_by_replicas = 0;
    for r in &replicas {
        fired_by_replicas += fires(r).await;
    }
    for r in &replicas {
        r.signal(Signal::SIGTERM);
    }
    for mut r in replicas {
        let status = r.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{}", r.log_text());
    }
    stop(work).await;

    let slots = fired_slots(&db).await;
    // Every even second from the first slot to the last, each once: none
    // twice, none skipped (each purge finished before the next slot).
    let (first, last) = (slots[0], slots[slots.len() - 1]);
    let expected: Vec<i64> = (first..=last).step_by(2).collect();
    assert_eq!(slots, expected, "slots fired twice or missed");
    assert!(
        slots.len() >= 25,
        "a minute fired only {} slots",
        slots.len()
    );
    assert_eq!(fired_by_replicas, slots.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_down_for_three_slots_fires_one_catch_up() {
    let db = TestDatabase::postgres().await;
    // Migrated before any process starts, so the test can read the tables.
    db.store().await.unwrap();
    let work = worker(&db);
    let first = scheduler(&db);
    let fired_before = wait_for_slots(&db, 2).await;
    first.signal(Signal::SIGKILL);
    let last_before = *fired_before.iter().max().unwrap();
    // Three slots and a bit go by with no scheduler.
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let restarted_at = Utc::now();
    let second = scheduler(&db);
    // The catch-up, then one regular slot after it.
    let slots = wait_for_slots(&db, fired_before.len() + 2).await;
    let log = second.log_text();
    stop(second).await;
    stop(work).await;

    // After the last slot before the outage: first the catch-up, the
    // latest slot missed (at least three went by), then the next regular
    // slot; nothing fired in between.
    let after: Vec<i64> = slots.iter().copied().filter(|s| *s > last_before).collect();
    assert!(
        after[0] >= last_before + 6,
        "fired {after:?} after {last_before}, restarted at {restarted_at}"
    );
    assert!(after[0] <= Utc::now().timestamp());
    assert_eq!(after[1], after[0] + 2, "{after:?}");
    assert!(log.contains("catching up the latest missed slot"), "{log}");
    let mut distinct = slots.clone();
    distinct.dedup();
    assert_eq!(slots, distinct, "a slot fired twice");
}
