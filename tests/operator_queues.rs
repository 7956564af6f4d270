//! An operator pauses a queue through the real `kiln serve`; a running
//! `kiln work` process leaves its job alone until the queue is resumed,
//! then runs it.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Client, kiln, wait_job};
use kiln_jobs::Probe;
use kiln_store::{JobState, NewJob, accounts::Identifier, testing::TestDatabase};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_paused_through_the_api_is_not_claimed_until_resumed() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let shared = |b: common::KilnBuilder| {
        b.database(&db.url)
            .env("KILN_API_CODE_KEY", "cd".repeat(32))
            .env("KILN_EMAIL_OUTBOX_DIR", outbox.path().display())
            .env("KILN_WORKER_POLL_INTERVAL_MS", 100)
    };
    let api = shared(kiln(&["serve"])).spawn();
    api.wait_http(api.http, "/readyz").await;
    let worker = shared(kiln(&["work"])).spawn();
    worker.wait_healthy().await;
    let olga = Client::signed_up(&api, "olga@example.com").await;
    store
        .set_operator(&Identifier::Email("olga@example.com".into()), true)
        .await
        .unwrap();

    let r = olga.post("/admin/v1/queues/default/pause", json!({})).await;
    assert_eq!(r.status(), 200);
    let id = store
        .enqueue(NewJob::of(&Probe::default()).unwrap())
        .await
        .unwrap()
        .id;
    // Another queue still runs, so the worker is claiming meanwhile.
    let purge = store
        .enqueue(NewJob::of(&kiln_jobs::RetentionPurge {}).unwrap())
        .await
        .unwrap()
        .id;
    wait_job(&store, purge, "finished", |j| j.state.is_final()).await;
    // Ten of the worker's polls.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let r = olga.get(&format!("/admin/v1/jobs/{id}")).await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "available", "{job}");
    assert_eq!(job["attempt"], 0);
    let overview: Value = olga.get("/admin/v1/queues").await.json().await.unwrap();
    let default = overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["paused"], true);
    assert_eq!(default["counts"]["available"], 1, "{default}");

    let r = olga
        .post("/admin/v1/queues/default/resume", json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = wait_job(&store, id, "finished", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempt, 1);
}
