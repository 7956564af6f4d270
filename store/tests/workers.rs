//! The worker registry on both databases: register, heartbeat, deregister
//! and list; lost, stalled and alive at controlled times; lost rows pruned.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::Probe;
use kiln_store::{
    NewJob, Store,
    testing::TestDatabase,
    workers::{Beat, NewWorker, WorkerId, WorkerStatus},
};

kiln_store::both_databases!(
    a_worker_registers_heartbeats_and_deregisters,
    a_worker_without_a_heartbeat_for_its_lease_is_lost,
    a_worker_with_free_slots_that_claims_nothing_while_jobs_are_due_is_stalled_unless_stopping,
    lost_workers_are_pruned_an_hour_later,
);

/// Now, to the millisecond both databases keep.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

fn worker(id: &str, started_at: DateTime<Utc>) -> NewWorker {
    NewWorker {
        id: WorkerId(id.to_owned()),
        host: "box-1".to_owned(),
        pid: 4242,
        version: "0.1.0".to_owned(),
        queues: vec!["default".to_owned(), "generation".to_owned()],
        concurrency: 4,
        started_at,
        lost_after: Duration::from_secs(30),
        stalled_after: Duration::from_secs(12),
    }
}

async fn status(store: &Store, id: &str, at: DateTime<Utc>) -> WorkerStatus {
    store
        .workers(at)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.row.worker.id.0 == id)
        .unwrap()
        .status
}

async fn a_worker_registers_heartbeats_and_deregisters(store: Store, _: &TestDatabase) {
    let t0 = now() - secs(60);
    let a = worker("box-1-4242-a", t0);
    let b = NewWorker {
        id: WorkerId("box-2-7-b".to_owned()),
        queues: vec!["notifications".to_owned()],
        ..worker("", t0 + secs(1))
    };
    store.register_worker(&a, t0).await.unwrap();
    store.register_worker(&b, t0 + secs(1)).await.unwrap();

    let claimed = t0 + secs(4);
    let beat = Beat {
        at: t0 + secs(5),
        running: 3,
        last_claim_at: Some(claimed),
        stopping: false,
    };
    assert!(store.worker_heartbeat(&a.id, beat).await.unwrap());
    let rows = store.worker_rows().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].worker, a, "oldest process first, as registered");
    assert_eq!(rows[0].heartbeat_at, t0 + secs(5));
    assert_eq!(rows[0].running, 3);
    assert_eq!(rows[0].last_claim_at, Some(claimed));
    assert_eq!(rows[1].worker, b);
    assert_eq!(rows[1].heartbeat_at, t0 + secs(1));
    assert_eq!(rows[1].running, 0);
    assert_eq!(rows[1].last_claim_at, None);
    assert!(!rows[0].stopping && !rows[1].stopping);

    // Registering again (after a prune) replaces the row, not a second one.
    store.register_worker(&a, t0 + secs(6)).await.unwrap();
    assert_eq!(store.worker_rows().await.unwrap().len(), 2);

    assert!(store.deregister_worker(&a.id).await.unwrap());
    assert!(!store.deregister_worker(&a.id).await.unwrap());
    let rows = store.worker_rows().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].worker.id, b.id);
    // A heartbeat of a process whose row is gone says so.
    assert!(!store.worker_heartbeat(&a.id, beat).await.unwrap());
}

async fn a_worker_without_a_heartbeat_for_its_lease_is_lost(store: Store, _: &TestDatabase) {
    let t0 = now();
    let w = worker("w", t0);
    store.register_worker(&w, t0).await.unwrap();
    assert_eq!(status(&store, "w", t0).await, WorkerStatus::Alive);
    assert_eq!(
        status(&store, "w", t0 + secs(29)).await,
        WorkerStatus::Alive
    );
    assert_eq!(status(&store, "w", t0 + secs(31)).await, WorkerStatus::Lost);
    // A heartbeat brings it back.
    let beat = Beat {
        at: t0 + secs(32),
        running: 0,
        last_claim_at: None,
        stopping: false,
    };
    assert!(store.worker_heartbeat(&w.id, beat).await.unwrap());
    assert_eq!(
        status(&store, "w", t0 + secs(33)).await,
        WorkerStatus::Alive
    );
}

async fn a_worker_with_free_slots_that_claims_nothing_while_jobs_are_due_is_stalled_unless_stopping(
    store: Store,
    _: &TestDatabase,
) {
    let t0 = now();
    let beat = |running: u32, last_claim_at: Option<DateTime<Utc>>| Beat {
        at: t0 - secs(1),
        running,
        last_claim_at,
        stopping: false,
    };
    // Registered a minute ago, heartbeating, never claimed.
    let idle = worker("idle", t0 - secs(60));
    store.register_worker(&idle, t0 - secs(60)).await.unwrap();
    store
        .worker_heartbeat(&idle.id, beat(0, None))
        .await
        .unwrap();
    // Nothing is due: idle is fine.
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Alive);

    // A job of its queue became due 5 s ago: not yet long enough.
    let probe = NewJob::of(&Probe::default()).unwrap();
    assert_eq!(probe.queue, "default");
    store
        .enqueue(probe.clone().run_at(t0 - secs(5)))
        .await
        .unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Alive);
    // One due for 20 s (its bound is 12 s): stalled.
    store.enqueue(probe.run_at(t0 - secs(20))).await.unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Stalled);

    // Claimed lately: alive.
    store
        .worker_heartbeat(&idle.id, beat(1, Some(t0 - secs(3))))
        .await
        .unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Alive);
    // Every slot busy: it cannot claim, so it is not stalled.
    store
        .worker_heartbeat(&idle.id, beat(4, Some(t0 - secs(50))))
        .await
        .unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Alive);
    store
        .worker_heartbeat(&idle.id, beat(3, Some(t0 - secs(50))))
        .await
        .unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Stalled);

    // A paused queue's due jobs are nobody's to claim.
    store.pause_queue("default").await.unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Alive);
    store.resume_queue("default").await.unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Stalled);

    // Shutting down, it stops claiming on purpose: stopping, not stalled.
    let stopping = Beat {
        stopping: true,
        ..beat(3, Some(t0 - secs(50)))
    };
    store.worker_heartbeat(&idle.id, stopping).await.unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Stopping);
    let row = store.worker_rows().await.unwrap().remove(0);
    assert!(row.stopping);
    // Past its lease without a heartbeat even a stopping one is lost.
    assert_eq!(
        status(&store, "idle", t0 + secs(40)).await,
        WorkerStatus::Lost
    );
    store
        .worker_heartbeat(&idle.id, beat(3, Some(t0 - secs(50))))
        .await
        .unwrap();
    assert_eq!(status(&store, "idle", t0).await, WorkerStatus::Stalled);

    // A worker of other queues is not stalled by them.
    let other = NewWorker {
        queues: vec!["notifications".to_owned()],
        ..worker("other", t0 - secs(60))
    };
    store.register_worker(&other, t0 - secs(1)).await.unwrap();
    assert_eq!(status(&store, "other", t0).await, WorkerStatus::Alive);

    // Silent past its lease: lost, whatever else holds.
    assert_eq!(
        status(&store, "idle", t0 + secs(40)).await,
        WorkerStatus::Lost
    );
}

async fn lost_workers_are_pruned_an_hour_later(store: Store, _: &TestDatabase) {
    let t0 = now();
    let hour = secs(3600);
    for (id, heartbeat) in [
        ("long-lost", t0 - hour - secs(31)),
        ("just-lost", t0 - secs(40)),
        ("alive", t0 - secs(1)),
    ] {
        store
            .register_worker(&worker(id, heartbeat), heartbeat)
            .await
            .unwrap();
    }
    let removed = store.prune_workers(t0 - hour).await.unwrap();
    assert_eq!(removed, 1);
    let mut left: Vec<String> = store
        .worker_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.worker.id.0)
        .collect();
    left.sort();
    assert_eq!(left, ["alive", "just-lost"]);
    assert_eq!(status(&store, "just-lost", t0).await, WorkerStatus::Lost);
}
