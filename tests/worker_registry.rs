//! The worker registry through the real binaries on PostgreSQL: three
//! `kiln work` processes list themselves at `GET /admin/v1/workers`; the
//! one running a job is SIGKILLed, shown `lost`, and its job is rescued
//! and finishes on another; one SIGSTOPped while a job of its queue is
//! due is shown `stalled` (its last heartbeat is still recent, it claims
//! nothing), then `lost` once a lease has passed without a heartbeat, and
//! after SIGCONT it is alive again, runs the job and deregisters as it
//! stops. One stopping with a job still running is shown `stopping`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{Client, Kiln, kiln, wait_job};
use kiln_jobs::Probe;
use kiln_store::{JobState, NewJob, accounts::Identifier, testing::TestDatabase};
use nix::sys::signal::Signal;
use serde_json::Value;

async fn workers(olga: &Client) -> Vec<Value> {
    let r = olga.get("/admin/v1/workers").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["workers"].as_array().unwrap().clone()
}

/// The listed worker of this process.
fn of(list: &[Value], process: &Kiln) -> Option<Value> {
    let pid = process.pid().as_raw();
    list.iter().find(|w| w["pid"] == pid).cloned()
}

/// Polls the list until the process's worker has `status`.
async fn wait_status(olga: &Client, process: &Kiln, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let list = workers(olga).await;
        if let Some(w) = of(&list, process).filter(|w| w["status"] == status) {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "worker {} never became {status}: {list:?}",
            process.pid()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_and_lost_and_stalled_ones_are_marked() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let shared = |b: common::KilnBuilder| {
        b.database(&db.url)
            .env("KILN_API_CODE_KEY", "cd".repeat(32))
            .env("KILN_EMAIL_OUTBOX_DIR", outbox.path().display())
            .env("KILN_WORKER_POLL_INTERVAL_MS", 200)
    };
    let api = shared(kiln(&["serve"])).spawn();
    api.wait_http(api.http, "/readyz").await;
    // Two of the default queue (and of the sign-up mail), with short
    // leases: a lost one is seen, and its job rescued, within seconds.
    let busy = || {
        shared(kiln(&["work"]))
            .env("KILN_WORKER_QUEUES", "[default, notifications]")
            .env("KILN_WORKER_LEASE_MS", 3000)
            .env("KILN_WORKER_MAINTENANCE_INTERVAL_MS", 200)
            .spawn()
    };
    let mut pair = [busy(), busy()];
    // One alone on its queue: a heartbeat every 4 s, stalled after 4.4 s
    // without a claim, lost after 12 s without a heartbeat.
    let mut quiet = shared(kiln(&["work"]))
        .env("KILN_WORKER_QUEUES", "[quiet]")
        .env("KILN_WORKER_LEASE_MS", 12_000)
        .spawn();
    for w in pair.iter().chain([&quiet]) {
        w.wait_healthy().await;
    }
    let olga = Client::signed_up(&api, "olga@example.com").await;
    store
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = workers(&olga).await;
        if list.len() == 3 {
            break list;
        }
        assert!(Instant::now() < deadline, "not three workers: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (process, queues) in [
        (&pair[0], vec!["default", "notifications"]),
        (&pair[1], vec!["default", "notifications"]),
        (&quiet, vec!["quiet"]),
    ] {
        let w = of(&list, process).unwrap();
        assert_eq!(w["status"], "alive", "{w}");
        assert_eq!(w["queues"], serde_json::json!(queues));
        assert_eq!(w["concurrency"], 16);
        assert_eq!(w["version"], env!("CARGO_PKG_VERSION"));
        assert!(w["host"].as_str().is_some_and(|h| !h.is_empty()));
        assert!(
            w["id"]
                .as_str()
                .unwrap()
                .contains(&process.pid().to_string())
        );
    }

    // The worker running a job is killed: lost, and the job finishes on
    // the other one.
    let id = store
        .enqueue(
            NewJob::of(&Probe {
                sleep_ms: 2_000,
                ..Probe::default()
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let running = wait_job(&store, id, "running", |j| j.state == JobState::Running).await;
    let owner = running.lease_owner.clone().unwrap();
    let first_ran_it = of(&workers(&olga).await, &pair[0]).unwrap()["id"] == owner;
    let [a, b] = &mut pair;
    let (victim, survivor) = if first_ran_it { (a, b) } else { (b, a) };
    victim.signal(Signal::SIGKILL);
    let lost = wait_status(&olga, &*victim, "lost", Duration::from_secs(30)).await;
    assert_eq!(lost["id"], owner);
    let done = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.rescues, 1);
    assert_eq!(done.errors[0].code, "lease_expired");
    let ran_on = done.result.unwrap()["worker"].clone();
    assert_eq!(ran_on, of(&workers(&olga).await, &*survivor).unwrap()["id"]);
    assert_eq!(
        of(&workers(&olga).await, &*survivor).unwrap()["status"],
        "alive"
    );

    // The lone worker of `quiet` stops while a job of its queue is due.
    quiet.signal(Signal::SIGSTOP);
    let due = store
        .enqueue(NewJob::of(&Probe::default()).unwrap().queue("quiet"))
        .await
        .unwrap()
        .id;
    wait_status(&olga, &quiet, "stalled", Duration::from_secs(12)).await;
    wait_status(&olga, &quiet, "lost", Duration::from_secs(20)).await;
    assert_eq!(
        store.get(due).await.unwrap().unwrap().state,
        JobState::Available
    );
    quiet.signal(Signal::SIGCONT);
    let done = wait_job(&store, due, "finished", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    wait_status(&olga, &quiet, "alive", Duration::from_secs(20)).await;

    // A clean stop deregisters; the killed one stays listed, lost.
    quiet.signal(Signal::SIGTERM);
    assert!(quiet.wait_exit(Duration::from_secs(30)).await.success());
    let list = workers(&olga).await;
    assert!(of(&list, &quiet).is_none(), "{list:?}");
    assert_eq!(of(&list, &*victim).unwrap()["status"], "lost");
    assert_eq!(list.len(), 2);

    // SIGTERM while a job runs: stopping (not stalled) until it is done.
    let long = store
        .enqueue(
            NewJob::of(&Probe {
                sleep_ms: 3_000,
                ..Probe::default()
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .id;
    wait_job(&store, long, "running", |j| j.state == JobState::Running).await;
    survivor.signal(Signal::SIGTERM);
    wait_status(&olga, &*survivor, "stopping", Duration::from_secs(10)).await;
    assert!(survivor.wait_exit(Duration::from_secs(30)).await.success());
    let done = store.get(long).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let list = workers(&olga).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(of(&list, &*victim).unwrap()["status"], "lost");
}
