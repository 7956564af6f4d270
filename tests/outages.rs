//! Postgres going away under load, through the real binary: while it is
//! down the API answers 503 problem+json with `Retry-After` (never a 500,
//! never a hang past the pool's wait), every job it accepted before or
//! after runs to the end, and a request repeated with its
//! `Idempotency-Key` after the outage goes in once.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Client, Outage, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

/// One answer of the load.
#[derive(Debug, Clone)]
struct Answer {
    key: String,
    status: u16,
    body: Value,
    content_type: String,
    retry_after: bool,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_thirty_seconds_under_load_loses_nothing_accepted() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let mut postgres = Outage::down("127.0.0.1:5432".parse().unwrap());
    postgres.up().await;
    let name = db.url.rsplit('/').next().unwrap();
    let through_proxy = format!("postgres://postgres@{}/{name}", postgres.addr);
    let kiln = kiln(&[])
        .database(&through_proxy)
        .env("KILN_WORKER_POLL_INTERVAL_MS", 200)
        .spawn();
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.outage@example.com").await;
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    let user: kiln_jobs::UserId = me["id"].as_str().unwrap().parse().unwrap();
    store.grant_credits(user, 10_000, "load").await.unwrap();

    // Four clients asking for generations without pause, each request
    // with a key of its own.
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for client in 0..4 {
        let (ada, answers, stop) = (ada.clone(), answers.clone(), stop.clone());
        load.spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("load-{client}-{n}");
                let started = Instant::now();
                let r = ada
                    .request(reqwest::Method::POST, "/v1/generations")
                    .header("Idempotency-Key", &key)
                    .json(&json!({"prompt": "a lighthouse", "size": "256x256"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let content_type = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let retry_after = r.headers().contains_key("retry-after");
                let body: Value = r.json().await.unwrap_or(Value::Null);
                answers.lock().unwrap().push(Answer {
                    key,
                    status,
                    body,
                    content_type,
                    retry_after,
                    took: started.elapsed(),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.cut();
    let down_at = answers.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    postgres.up().await;
    let up_at = answers.lock().unwrap().len();
    // Until a request goes in again, then a while longer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recovered = answers.lock().unwrap()[up_at..]
            .iter()
            .filter(|a| a.status == 202)
            .count();
        if recovered >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let answers = answers.lock().unwrap().clone();

    // Every answer is an acceptance or a 503 problem that says to retry.
    let mut unavailable = 0;
    for a in &answers {
        match a.status {
            202 => {}
            503 => {
                unavailable += 1;
                assert_eq!(a.content_type, "application/problem+json", "{a:?}");
                assert_eq!(a.body["code"], "unavailable", "{a:?}");
                assert!(a.retry_after, "{a:?}");
                assert!(a.took < Duration::from_secs(45), "{a:?}");
            }
            other => panic!("answer {other} during the run: {a:?}"),
        }
    }
    assert!(unavailable > 0, "no request met the outage");
    assert!(down_at > 0 && answers.len() > up_at);

    // Nothing accepted is lost: each accepted job ends succeeded.
    let accepted: Vec<&Answer> = answers.iter().filter(|a| a.status == 202).collect();
    for a in &accepted {
        let job = ada.wait_final(a.body["id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    // A refused request repeated with its key goes in, once.
    let refused = answers.iter().find(|a| a.status == 503).unwrap();
    let again = |key: String| {
        let ada = ada.clone();
        async move {
            ada.request(reqwest::Method::POST, "/v1/generations")
                .header("Idempotency-Key", key)
                .json(&json!({"prompt": "a lighthouse", "size": "256x256"}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = again(refused.key.clone()).await;
    assert!(
        matches!(first.status().as_u16(), 200 | 202),
        "{}",
        first.status()
    );
    let first: Value = first.json().await.unwrap();
    let second: Value = again(refused.key.clone()).await.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    eprintln!(
        "outage: {} requests, {} accepted, {} answered 503 while Postgres was down 30 s",
        answers.len(),
        accepted.len(),
        unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_limits_fail_closed_and_recover() {
    let db = TestDatabase::postgres().await;
    let mut redis = Outage::down("127.0.0.1:6379".parse().unwrap());
    redis.up().await;
    let prefix = format!("kiln-test-{}:", uuid::Uuid::now_v7().simple());
    let kiln = kiln(&[])
        .database(&db.url)
        .env(
            "KILN_RATE_LIMITS_REDIS_URL",
            format!("redis://{}", redis.addr),
        )
        .env("KILN_RATE_LIMITS_KEY_PREFIX", &prefix)
        .env(
            "KILN_RATE_LIMITS_PROVIDERS",
            "{images={requests_per_second=50,max_concurrent=4}}",
        )
        .spawn();
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.redis@example.com").await;
    let generate = || {
        let ada = ada.clone();
        async move {
            let r = ada
                .post(
                    "/v1/generations",
                    json!({"prompt": "a heron", "size": "256x256"}),
                )
                .await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let job = generate().await;
    assert_eq!(ada.wait_final(&job).await["state"], "succeeded");

    redis.cut();
    // The limit cannot be asked: the job waits and retries rather than
    // calling the provider unlimited.
    let job = generate().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Value = ada
            .get(&format!("/v1/jobs/{job}"))
            .await
            .json()
            .await
            .unwrap();
        if now["state"] == "retryable" {
            assert_eq!(now["error"]["code"], "rate_limiter_unavailable", "{now}");
            assert!(now["next_run_at"].is_string(), "{now}");
            break;
        }
        assert_ne!(now["state"], "succeeded", "ran without its limit: {now}");
        assert!(Instant::now() < deadline, "never retried: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Codes are not sent unthrottled either: 503, try again.
    let r = reqwest::Client::new()
        .post(kiln.url("/v1/auth/resend"))
        .json(&json!({"email": "ada.redis@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let ready = reqwest::get(kiln.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "readiness names Redis");

    redis.up().await;
    let done = ada.wait_final(&job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["attempt"].as_u64().unwrap() >= 2, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_object_storage_retries_jobs_and_shows_nothing_half_stored() {
    let bucket = common::FakeBucket::default();
    let s3 = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(bucket.clone())
        .mount(&s3)
        .await;
    let db = TestDatabase::postgres().await;
    let kiln = kiln(&[])
        .database(&db.url)
        .env("KILN_STORAGE_BACKEND", "s3")
        .env("KILN_STORAGE_S3_BUCKET", "kiln-images")
        .env("KILN_STORAGE_S3_REGION", "us-east-1")
        .env("KILN_STORAGE_S3_ENDPOINT", s3.uri())
        .env("KILN_STORAGE_S3_ACCESS_KEY_ID", "test")
        .env("KILN_STORAGE_S3_SECRET_ACCESS_KEY", "test-secret")
        .env("KILN_STORAGE_S3_VIRTUAL_HOSTED_STYLE", false)
        .env("KILN_STORAGE_S3_ALLOW_HTTP", true)
        .spawn();
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.storage@example.com").await;

    bucket.fail(true);
    let id = ada
        .accepted(
            "/v1/generations",
            json!({"prompt": "a lantern", "size": "256x256"}),
        )
        .await;
    // Its attempt fails on storage and waits to retry; no image shows.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now: Value = ada
            .get(&format!("/v1/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if now["state"] == "retryable" {
            assert_eq!(now["error"]["code"], "store_unavailable", "{now}");
            break;
        }
        assert!(
            !matches!(now["state"].as_str(), Some("succeeded" | "failed")),
            "{now}"
        );
        assert!(Instant::now() < deadline, "never retried: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let images: Value = ada.get("/v1/images").await.json().await.unwrap();
    assert_eq!(images["images"], json!([]), "a half-stored image shows");

    bucket.fail(false);
    let done = ada.wait_final(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let images: Value = ada.get("/v1/images").await.json().await.unwrap();
    assert_eq!(images["images"].as_array().unwrap().len(), 1, "{images}");
}
