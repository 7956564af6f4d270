//! The scheduler against real databases, each test on PostgreSQL and on
//! SQLite: replicas fire each slot once, a slot never fires after a later
//! one, a plan whose last job has not finished skips its slot, downtime is
//! caught up with one slot, and a bad cron setting is refused by name.
//!
//! Slots are explicit timestamps; the one test of `run` waits for events
//! in the database and bounds nothing by time.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use cron::Schedule;
use kiln_jobs::{Job, RetentionPurge};
use kiln_scheduler::{Plan, SchedulerConfig, catch_up, fire, latest_due, plans, run};
use kiln_store::{Completion, NewJob, Store, schedules::SlotFired, testing::TestDatabase};
use tokio_util::sync::CancellationToken;

kiln_store::both_databases!(
    replicas_asking_for_one_slot_at_once_fire_it_once,
    a_slot_older_than_the_last_handled_is_not_fired,
    a_plan_whose_last_job_runs_skips_its_slot,
    three_running_schedulers_fire_each_slot_once,
    downtime_is_caught_up_with_the_latest_slot_only,
    a_plan_that_never_fired_does_not_catch_up,
);

/// A plan that fires every second: slots to spare in a short window.
fn every_second(name: &'static str) -> Plan {
    Plan {
        name,
        setting: "test",
        schedule: Schedule::from_str("* * * * * *").unwrap(),
        job: |_| NewJob::of(&RetentionPurge {}).map_err(|e| e.to_string()),
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
        RetentionPurge::KIND
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

fn key(plan: &str, slot: DateTime<Utc>) -> String {
    format!("{plan}:{}", slot.timestamp())
}

/// Plays the worker: runs every due maintenance job to success. Returns
/// how many it finished.
async fn finish_due(store: &Store) -> usize {
    let queues = vec![RetentionPurge::QUEUE.to_owned()];
    let claimed = store
        .claim("test", &queues, 100, Duration::from_secs(60))
        .await
        .unwrap();
    let done: Vec<Completion> = claimed
        .iter()
        .map(|j| Completion {
            lease: j.lease,
            result: serde_json::json!({"purged": {}}),
        })
        .collect();
    store.complete(&done).await.unwrap();
    done.len()
}

async fn replicas_asking_for_one_slot_at_once_fire_it_once(store: Store, db: &TestDatabase) {
    let plan = every_second("every_second");
    let slot = at(10, 0, 1);
    let (a, b, c) = tokio::join!(
        fire(&store, &plan, slot),
        fire(&store, &plan, slot),
        fire(&store, &plan, slot)
    );
    let outcomes = [a.unwrap(), b.unwrap(), c.unwrap()];
    let fired = outcomes
        .iter()
        .filter(|o| matches!(o, SlotFired::Fired(_)))
        .count();
    assert_eq!(fired, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, SlotFired::Fired(_) | SlotFired::AlreadyHandled)),
        "{outcomes:?}"
    );
    assert_eq!(keys(db).await, vec![key("every_second", slot)]);
    let records = store.plan_records().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].last_slot, Some(slot));
}

async fn a_slot_older_than_the_last_handled_is_not_fired(store: Store, db: &TestDatabase) {
    let plan = every_second("every_second");
    assert!(matches!(
        fire(&store, &plan, at(10, 0, 5)).await.unwrap(),
        SlotFired::Fired(_)
    ));
    finish_due(&store).await;
    // A replica that lagged behind asks for an earlier slot, then the same.
    for slot in [at(10, 0, 3), at(10, 0, 5)] {
        assert_eq!(
            fire(&store, &plan, slot).await.unwrap(),
            SlotFired::AlreadyHandled
        );
    }
    assert_eq!(keys(db).await, vec![key("every_second", at(10, 0, 5))]);
}

async fn a_plan_whose_last_job_runs_skips_its_slot(store: Store, db: &TestDatabase) {
    let plan = every_second("every_second");
    let SlotFired::Fired(first) = fire(&store, &plan, at(10, 0, 1)).await.unwrap() else {
        panic!("the first slot did not fire");
    };
    // Claimed and running, as an overrunning purge would be.
    let queues = vec![RetentionPurge::QUEUE.to_owned()];
    let running = store
        .claim("test", &queues, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(
        fire(&store, &plan, at(10, 0, 2)).await.unwrap(),
        SlotFired::StillRunning(first)
    );
    // The skipped slot stays skipped for every replica.
    assert_eq!(
        fire(&store, &plan, at(10, 0, 2)).await.unwrap(),
        SlotFired::AlreadyHandled
    );
    store
        .complete(&[Completion {
            lease: running[0].lease,
            result: serde_json::json!({"purged": {}}),
        }])
        .await
        .unwrap();
    assert!(matches!(
        fire(&store, &plan, at(10, 0, 3)).await.unwrap(),
        SlotFired::Fired(_)
    ));
    assert_eq!(
        keys(db).await,
        vec![
            key("every_second", at(10, 0, 1)),
            key("every_second", at(10, 0, 3))
        ]
    );
}

async fn three_running_schedulers_fire_each_slot_once(store: Store, db: &TestDatabase) {
    let stop = CancellationToken::new();
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(run(
                store.clone(),
                vec![every_second("every_second")],
                true,
                stop.clone(),
            ))
        })
        .collect();
    // Until four slots have fired, finishing each job as a worker would.
    // The deadline only turns a hang into a failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = keys(db).await;
    while seen.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedulers enqueued only {seen:?}"
        );
        finish_due(&store).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
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
}

async fn downtime_is_caught_up_with_the_latest_slot_only(store: Store, db: &TestDatabase) {
    let plan = every_second("every_second");
    let now = Utc::now();
    let before = latest_due(&plan.schedule, now - TimeDelta::seconds(10)).unwrap();
    assert!(matches!(
        fire(&store, &plan, before).await.unwrap(),
        SlotFired::Fired(_)
    ));
    finish_due(&store).await;
    // Ten slots went by with no scheduler: one fires, the latest.
    let latest = latest_due(&plan.schedule, now).unwrap();
    assert!(matches!(
        catch_up(&store, &plan, now).await.unwrap(),
        Some(SlotFired::Fired(_))
    ));
    // A second replica starting at the same time finds nothing missed.
    assert_eq!(catch_up(&store, &plan, now).await.unwrap(), None);
    assert_eq!(
        keys(db).await,
        vec![key("every_second", before), key("every_second", latest)]
    );
}

async fn a_plan_that_never_fired_does_not_catch_up(store: Store, db: &TestDatabase) {
    let plan = every_second("every_second");
    assert_eq!(catch_up(&store, &plan, Utc::now()).await.unwrap(), None);
    assert!(keys(db).await.is_empty());
}

#[test]
fn the_latest_due_slot_is_at_or_before_now() {
    let schedule = Schedule::from_str("*/2 * * * * *").unwrap();
    assert_eq!(latest_due(&schedule, at(10, 0, 4)), Some(at(10, 0, 4)));
    let half_past = at(10, 0, 5) + TimeDelta::milliseconds(500);
    assert_eq!(latest_due(&schedule, half_past), Some(at(10, 0, 4)));
    let daily = &plans(&SchedulerConfig::default()).unwrap()[0];
    assert_eq!(daily.name, "retention_purge");
    assert_eq!(
        latest_due(&daily.schedule, at(10, 0, 0)),
        Some(at(3, 17, 0))
    );
}

#[test]
fn an_invalid_cron_expression_is_refused_naming_the_setting() {
    for expr in ["every tuesday", "", "* * * *", "61 * * * * *"] {
        let config = SchedulerConfig {
            retention_purge_cron: expr.to_owned(),
            ..Default::default()
        };
        let err = plans(&config)
            .err()
            .unwrap_or_else(|| panic!("{expr:?} was accepted"));
        assert!(
            err.contains("scheduler.retention_purge_cron"),
            "{expr:?}: {err}"
        );
        assert!(err.contains(&format!("{expr:?}")), "{expr:?}: {err}");
    }
    assert!(plans(&SchedulerConfig::default()).is_ok());
}
