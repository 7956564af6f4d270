//! Multi-process tests: the real `kiln` binary on PostgreSQL.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Outage, kiln, wait_job};
use kiln_jobs::{Probe, ProbeFailure};
use kiln_store::{JobState, NewJob, testing::TestDatabase};
use nix::sys::signal::Signal;

fn probe(p: Probe) -> NewJob {
    NewJob::of(&p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_run_500_jobs_each_exactly_once() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            kiln(&["work"])
                .database(&db.url)
                .env("KILN_WORKER_CONCURRENCY", 8)
                .spawn()
        })
        .collect();
    for w in &workers {
        w.wait_healthy().await;
    }
    let jobs: Vec<_> = (0..500)
        .map(|_| {
            probe(Probe {
                sleep_ms: 10,
                ..Probe::default()
            })
        })
        .collect();
    let ids = store.enqueue_many(jobs).await.unwrap();
    assert_eq!(ids.len(), 500);
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let job = wait_job(&store, *id, "finished", |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.attempt, 1, "job {id} ran more than once");
        assert!(job.errors.is_empty());
        let worker = job.result.unwrap()["worker"].as_str().unwrap().to_owned();
        *by_worker.entry(worker).or_default() += 1;
    }
    assert_eq!(by_worker.len(), 2, "work was not spread: {by_worker:?}");
    assert!(
        by_worker.values().all(|n| *n >= 50),
        "lopsided: {by_worker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_job_is_rescued_and_succeeds() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let victim = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_LEASE_MS", 1500)
        .spawn();
    victim.wait_healthy().await;
    let id = store
        .enqueue(probe(Probe {
            sleep_ms: 3000,
            ..Probe::default()
        }))
        .await
        .unwrap()
        .id;
    wait_job(&store, id, "running", |j| j.state == JobState::Running).await;
    victim.signal(Signal::SIGKILL);

    let rescuer = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_MAINTENANCE_INTERVAL_MS", 200)
        .spawn();
    rescuer.wait_healthy().await;
    let job = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2);
    assert_eq!(job.rescues, 1);
    assert_eq!(job.errors[0].code, "lease_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_hands_back_running_jobs_without_spending_attempts() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let mut worker = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_SHUTDOWN_GRACE_MS", 1500)
        .spawn();
    worker.wait_healthy().await;
    let short = store
        .enqueue(probe(Probe {
            sleep_ms: 500,
            ..Probe::default()
        }))
        .await
        .unwrap()
        .id;
    let long = store
        .enqueue(probe(Probe {
            sleep_ms: 600_000,
            ..Probe::default()
        }))
        .await
        .unwrap()
        .id;
    for id in [short, long] {
        wait_job(&store, id, "started", |j| {
            j.stage.as_deref() == Some("sleeping")
        })
        .await;
    }
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "kiln exited with {status}");

    let short = store.get(short).await.unwrap().unwrap();
    assert_eq!(
        short.state,
        JobState::Succeeded,
        "a job that fit in the grace period was cut"
    );
    let long = store.get(long).await.unwrap().unwrap();
    assert_eq!(long.state, JobState::Available);
    assert_eq!(long.attempt, 0, "handing back spent an attempt");
    assert!(long.errors.is_empty());
    assert!(long.lease_owner.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_failing_handlers_end_failed_with_history() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let worker = kiln(&["work"]).database(&db.url).spawn();
    worker.wait_healthy().await;
    let panicking = store
        .enqueue(probe(Probe {
            panic: true,
            ..Probe::default()
        }))
        .await
        .unwrap()
        .id;
    let failing = store
        .enqueue(probe(Probe {
            fail: Some(ProbeFailure::Transient),
            ..Probe::default()
        }))
        .await
        .unwrap()
        .id;
    for (id, code) in [(panicking, "panic"), (failing, "probe_failure")] {
        let job = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempt, job.max_attempts);
        assert_eq!(job.errors.len(), job.max_attempts as usize);
        assert!(
            job.errors.iter().all(|e| e.code == code),
            "{:?}",
            job.errors
        );
    }
    let stuck = store
        .queue_stats()
        .await
        .unwrap()
        .iter()
        .filter(|s| s.state == JobState::Running)
        .map(|s| s.count)
        .sum::<i64>();
    assert_eq!(stuck, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_an_unreachable_postgres_and_recovers() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let mut postgres = Outage::down("127.0.0.1:5432".parse().unwrap());
    let name = db.url.rsplit('/').next().unwrap();
    let through_proxy = format!("postgres://postgres@{}/{name}", postgres.addr);
    let worker = kiln(&["work"])
        .database(&through_proxy)
        .env("KILN_WORKER_POLL_INTERVAL_MS", 200)
        .spawn();
    // It starts, finds no database, and keeps trying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.log_text().contains("database unreachable"),
        "{}",
        worker.log_text()
    );

    postgres.up().await;
    worker.wait_healthy().await;
    let id = store.enqueue(probe(Probe::default())).await.unwrap().id;
    let job = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded);

    // The database goes away while the worker runs, then comes back.
    postgres.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = store.enqueue(probe(Probe::default())).await.unwrap().id;
    postgres.up().await;
    let job = wait_job(&store, later, "finished", |j| j.state.is_final()).await;
    assert_eq!(job.state, JobState::Succeeded);
}
