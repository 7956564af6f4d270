//! The scheduler against real databases, each test on PostgreSQL and on
//! SQLite: replicas fire each slot once, a gap in firing is caught up slot
//! by slot, and a bad cron setting is refused by name.
//!
//! Slots come from explicit timestamps passed to `fire_due`; the one test
//! of `run` waits for events in the database and bounds nothing by time.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use cron::Schedule;
use kiln_jobs::{Job, PruneJobs};
use kiln_scheduler::{Plan, SchedulerConfig, fire_due, plans, run};
use kiln_store::{JobState, NewJob, Store, testing::TestDatabase};
use tokio_util::sync::CancellationToken;

kiln_store::both_databases!(
    two_replicas_over_the_same_slots_enqueue_each_slot_once,
    two_running_schedulers_enqueue_each_slot_once,
    a_gap_is_caught_up_with_every_missed_slot,
    the_configured_prune_plan_fires_hourly_at_minute_17,
);

/// A plan that fires every second: slots to spare in a short window.
fn every_second(name: &'static str) -> Plan {
    Plan {
        name,
        schedule: Schedule::from_str("* * * * * *").unwrap(),
        job: NewJob::of(&PruneJobs {}).unwrap(),
    }
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, h, m, s).unwrap()
}

/// The idempotency keys of every job of the plans' kind, sorted, with
/// duplicates kept (so a slot enqueued twice shows twice).
async fn keys(db: &TestDatabase) -> Vec<String> {
    let sql = format!(
        "SELECT coalesce(idempotency_key, '') FROM jobs WHERE kind = '{0}'
         UNION ALL SELECT coalesce(idempotency_key, '') FROM finished_jobs WHERE kind = '{0}'
         ORDER BY 1",
        PruneJobs::KIND
    );
    let sql = sqlx::AssertSqlSafe(sql);
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows.into_iter().map(|(k,)| k).collect()
    } else {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows.into_iter().map(|(k,)| k).collect()
    }
}

/// `plan:slot` keys for these slots, sorted as [`keys`] sorts them.
fn slot_keys(plan: &str, slots: impl IntoIterator<Item = DateTime<Utc>>) -> Vec<String> {
    let mut keys: Vec<String> = slots
        .into_iter()
        .map(|t| format!("{plan}:{}", t.timestamp()))
        .collect();
    keys.sort();
    keys
}

async fn two_replicas_over_the_same_slots_enqueue_each_slot_once(store: Store, db: &TestDatabase) {
    let a = vec![every_second("every_second")];
    let b = vec![every_second("every_second")];
    let (since, until) = (at(10, 0, 0), at(10, 0, 20));
    // Both replicas at once over the same window, then each again.
    let (fired_a, fired_b) = tokio::join!(
        fire_due(&store, &a, since, until),
        fire_due(&store, &b, since, until)
    );
    assert!(
        fired_a && fired_b,
        "a replica reported a slot it could not enqueue"
    );
    assert!(fire_due(&store, &a, since, until).await);
    assert!(fire_due(&store, &b, since, until).await);

    // (10:00:00, 10:00:20]: the 20 slots 10:00:01 ..= 10:00:20, once each.
    let expected = slot_keys("every_second", (1..=20).map(|s| at(10, 0, s)));
    assert_eq!(keys(db).await, expected);
}

async fn two_running_schedulers_enqueue_each_slot_once(store: Store, db: &TestDatabase) {
    let stop = CancellationToken::new();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(run(
                store.clone(),
                vec![every_second("every_second")],
                stop.clone(),
            ))
        })
        .collect();
    // Until three slots have been enqueued (between them, the replicas
    // have raced for each). The deadline only turns a hang into a failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = keys(db).await;
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedulers enqueued only {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = keys(db).await;
    }
    stop.cancel();
    for replica in replicas {
        replica.await.unwrap();
    }
    let seen = keys(db).await;
    let mut distinct = seen.clone();
    distinct.dedup();
    assert_eq!(seen, distinct, "a slot was enqueued twice");
    let slots: Vec<i64> = seen
        .iter()
        .map(|k| {
            k.strip_prefix("every_second:")
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("not a plan:slot key: {k}"))
        })
        .collect();
    // One job per second, none skipped, between the first and the last.
    let (first, last) = (slots[0], slots[slots.len() - 1]);
    assert_eq!(slots, (first..=last).collect::<Vec<_>>());
}

/// After downtime, `fire_due(since, until)` enqueues every slot in
/// (since, until]: the missed ones are not dropped or merged into one, and
/// each is due at once (no `run_at` of its slot time).
async fn a_gap_is_caught_up_with_every_missed_slot(store: Store, db: &TestDatabase) {
    let plans = vec![every_second("every_second")];
    assert!(fire_due(&store, &plans, at(9, 59, 55), at(10, 0, 0)).await);
    // Down from 10:00:00 to 10:01:30: 90 slots missed.
    assert!(fire_due(&store, &plans, at(10, 0, 0), at(10, 1, 30)).await);
    let expected = slot_keys(
        "every_second",
        (56..=59)
            .map(|s| at(9, 59, s))
            .chain((0..=59).map(|s| at(10, 0, s)))
            .chain((0..=30).map(|s| at(10, 1, s))),
    );
    assert_eq!(keys(db).await, expected);

    // A replica that comes back with an older `since` (it was down longer)
    // enqueues nothing twice.
    assert!(fire_due(&store, &plans, at(9, 59, 0), at(10, 1, 30)).await);
    let expected = slot_keys(
        "every_second",
        (1..=59)
            .map(|s| at(9, 59, s))
            .chain((0..=59).map(|s| at(10, 0, s)))
            .chain((0..=30).map(|s| at(10, 1, s))),
    );
    assert_eq!(keys(db).await, expected);

    // Every caught-up job is due now, not at its slot.
    let stats = store.queue_stats().await.unwrap();
    let count = |state: JobState| {
        stats
            .iter()
            .filter(|s| s.queue == PruneJobs::QUEUE && s.state == state)
            .map(|s| s.count)
            .sum::<i64>()
    };
    assert_eq!(
        count(JobState::Available),
        expected.len() as i64,
        "{stats:?}"
    );
    assert_eq!(count(JobState::Scheduled), 0, "{stats:?}");
}

async fn the_configured_prune_plan_fires_hourly_at_minute_17(store: Store, db: &TestDatabase) {
    let plans = plans(&SchedulerConfig::default()).unwrap();
    // Three hours of downtime: 10:17, 11:17 and 12:17 are due; the window
    // is open at `since` (09:17 fired before) and closed at `until`.
    assert!(fire_due(&store, &plans, at(9, 17, 0), at(12, 17, 0)).await);
    assert_eq!(
        keys(db).await,
        slot_keys("prune_jobs", [at(10, 17, 0), at(11, 17, 0), at(12, 17, 0)])
    );
    // Nothing is due inside one hour between two slots.
    assert!(fire_due(&store, &plans, at(12, 17, 0), at(13, 16, 59)).await);
    assert_eq!(keys(db).await.len(), 3);
}

#[test]
fn an_invalid_cron_expression_is_refused_naming_the_setting() {
    for expr in ["every tuesday", "", "* * * *", "61 * * * * *"] {
        let config = SchedulerConfig {
            prune_jobs_cron: expr.to_owned(),
        };
        let err = plans(&config)
            .err()
            .unwrap_or_else(|| panic!("{expr:?} was accepted"));
        assert!(err.contains("scheduler.prune_jobs_cron"), "{expr:?}: {err}");
        assert!(err.contains(&format!("{expr:?}")), "{expr:?}: {err}");
    }
    assert!(plans(&SchedulerConfig::default()).is_ok());
}
