//! The binary's front door: the default start, configuration errors.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::kiln;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_arguments_kiln_starts_on_sqlite_and_answers_healthz() {
    let cwd = tempfile::tempdir().unwrap();
    let mut k = kiln(&[]).cwd(cwd.path()).spawn();
    k.wait_http(k.http, "/healthz").await;
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", k.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"], "sqlite");
    assert!(cwd.path().join("data/kiln.db").exists());
    let metrics = reqwest::get(format!("http://{}/metrics", k.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.is_empty() || metrics.contains("kiln_"), "{metrics}");
    k.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(k.wait_exit(Duration::from_secs(30)).await.success());
}

async fn refused(k: &mut common::Kiln) -> String {
    let status = k.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(2),
        "bad setting was not refused: {}",
        k.log_text()
    );
    k.log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_kiln_with_a_message_naming_it() {
    let mut k = kiln(&["work"])
        .env("KILN_WORKER_CONCURRENCY", "lots")
        .spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("worker.concurrency"), "{log}");

    let mut k = kiln(&["work"]).env("KILN_WORKER_CONCURRENCY", "0").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("worker.concurrency"), "{log}");

    let mut k = kiln(&[]).database("mysql://localhost/kiln").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("database.url"), "{log}");

    let mut k = kiln(&[]).env("KILN_HTTP_ADDR", "not-an-address").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("http.addr") || log.contains("http"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.toml");
    std::fs::write(&file, "[worker]\nconcurency = 4\n").unwrap();
    let mut k = kiln(&["--config", file.to_str().unwrap()]).spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("concurency"), "{log}");

    let mut k = kiln(&[])
        .env("KILN_SCHEDULER_PRUNE_JOBS_CRON", "every tuesday")
        .spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("scheduler.prune_jobs_cron"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_includes_the_redis_of_shared_rate_limits() {
    let ready = kiln(&[])
        .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:6379")
        .spawn();
    ready.wait_http(ready.http, "/readyz").await;
    let body: serde_json::Value = reqwest::get(ready.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["dependencies"], serde_json::json!(["redis"]));

    // Nothing listens on port 1: live, but not ready.
    let unready = kiln(&[])
        .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:1")
        .spawn();
    unready.wait_http(unready.http, "/healthz").await;
    let r = reqwest::get(unready.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "not_ready");
    assert_eq!(problem["detail"], "redis does not answer");
}
