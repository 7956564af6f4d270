//! Completion webhooks through a real `kiln` process on PostgreSQL and a
//! local receiver: deliveries are signed (verifiable with the published
//! Standard Webhooks scheme), retried on 503 with one event id, never
//! follow a redirect, carry nothing about the account, and are listed at
//! `GET /v1/jobs/{id}/deliveries`. Private addresses are refused at
//! enqueue (in process, under the production settings).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use common::{Client, Kiln, kiln};
use kiln_api::testing::TestApi;
use kiln_providers::payments::signature::{standard_secret, verify_standard};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on 127.0.0.1: `/flaky` answers 503 (Retry-After: 1)
/// to its first two requests and 200 after; `/redirect` answers 302 to
/// `/landed`; anything else answers 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let app = Router::new()
            .route("/{path}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn to(&self, path: &str) -> Vec<Received> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|r| r.path == path).cloned().collect()
    }

    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.to(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} requests, not {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = {
        let mut got = receiver.got.lock().unwrap();
        got.push(Received {
            path: path.clone(),
            headers,
            body,
        });
        got.iter().filter(|r| r.path == path).count()
    };
    match path.as_str() {
        "flaky" if seen <= 2 => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy",
        )
            .into_response(),
        "redirect" => (StatusCode::FOUND, [(header::LOCATION, "/landed")]).into_response(),
        _ => (StatusCode::OK, "thanks").into_response(),
    }
}

/// kiln on `db`, allowed to deliver to the loopback receiver (a test-only
/// setting: production refuses private addresses).
fn kiln_on(db: &TestDatabase) -> Kiln {
    kiln(&[])
        .database(&db.url)
        .env("KILN_WEBHOOKS_ALLOW_HTTP", "true")
        .env("KILN_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true")
        .spawn()
}

async fn secret(client: &Client) -> String {
    let r = client.post("/v1/me/webhook-secret", json!({})).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["secret"].as_str().unwrap().to_owned()
}

async fn deliveries(client: &Client, job: &str) -> Vec<Value> {
    let r = client.get(&format!("/v1/jobs/{job}/deliveries")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["deliveries"].as_array().unwrap().clone()
}

/// Waits until the job's deliveries say no attempt follows.
async fn settled_deliveries(client: &Client, job: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = deliveries(client, job).await;
        if list.len() >= n && list.last().is_some_and(|d| d["outcome"] != "retrying") {
            return list;
        }
        assert!(Instant::now() < deadline, "deliveries: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_is_signed_retried_with_one_event_id_and_names_nobody() {
    let db = TestDatabase::postgres().await;
    let (receiver, addr) = Receiver::start().await;
    let kiln = kiln_on(&db);
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.webhooks@example.com").await;
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    let user_id = me["id"].as_str().unwrap().to_owned();
    let secret = secret(&ada).await;

    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "a lighthouse", "webhook_url": format!("http://{addr}/flaky")}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();

    let got = receiver.wait_for("flaky", 3).await;
    // The same event every time: one id, and the same payload.
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "ids: {ids:?}");
    let key = standard_secret(&secret).unwrap();
    for r in &got {
        let id = verify_standard(
            &key,
            &r.headers,
            &r.body,
            chrono::Utc::now(),
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(id, ids[0]);
        assert_eq!(r.headers["content-type"], "application/json");
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        for personal in ["ada.webhooks", "example.com", user_id.as_str()] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["type"], "job.completed");
        assert_eq!(body["data"]["id"], job_id.as_str());
        assert_eq!(body["data"]["state"], "succeeded");
        assert_eq!(
            body["data"]["result"]["images"].as_array().unwrap().len(),
            1
        );
    }
    // A signature under another secret does not verify.
    assert!(
        verify_standard(
            b"another secret entirely",
            &got[2].headers,
            &got[2].body,
            chrono::Utc::now(),
            Duration::from_secs(300),
        )
        .is_err()
    );

    let list = settled_deliveries(&ada, &job_id, 3).await;
    let summary: Vec<(u64, Option<u64>, &str)> = list
        .iter()
        .map(|d| {
            assert_eq!(d["event_id"], ids[0]);
            assert_eq!(d["event"], "job.completed");
            (
                d["attempt"].as_u64().unwrap(),
                d["status_code"].as_u64(),
                d["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Some(503), "retrying"),
            (2, Some(503), "retrying"),
            (3, Some(200), "delivered"),
        ]
    );
    assert_eq!(list[0]["error"], "status_503");

    // Another account sees nothing of it.
    let bob = Client::signed_up(&kiln, "bob.webhooks@example.com").await;
    let r = bob.get(&format!("/v1/jobs/{job_id}/deliveries")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_an_event_and_a_redirect_is_not_followed() {
    let db = TestDatabase::postgres().await;
    let (receiver, addr) = Receiver::start().await;
    let kiln = kiln_on(&db);
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.redirects@example.com").await;
    secret(&ada).await;
    let r = ada
        .post(
            "/v1/generations",
            json!({
                "prompt": "a harbour",
                "webhook_url": format!("http://{addr}/redirect"),
                "webhook_events": "all",
            }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    ada.wait_final(&job_id).await;

    // Each event is tried once: a redirect is a refusal, not retried.
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let list = deliveries(&ada, &job_id).await;
        if list.iter().any(|d| d["event"] == "job.completed") {
            break list;
        }
        assert!(Instant::now() < deadline, "deliveries: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for d in &list {
        assert_eq!(d["status_code"], 302);
        assert_eq!(d["outcome"], "failed");
        assert_eq!(d["error"], "redirect_refused");
        *per_event
            .entry(d["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(per_event.values().all(|n| *n == 1), "{per_event:?}");
    let changed = list.iter().filter(|d| d["event"] == "job.changed").count();
    assert!(changed >= 3, "running, then each stage: {list:#?}");
    let stages: Vec<String> = receiver
        .to("redirect")
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|b| b["type"] == "job.changed")
        .map(|b| b["data"]["stage"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(stages.iter().any(|s| s == "generating"), "{stages:?}");
    assert!(
        receiver.to("landed").is_empty(),
        "the redirect was followed"
    );
}

/// Under the production settings (no loopback), in process.
#[tokio::test]
async fn webhook_urls_are_checked_at_enqueue() {
    let api = TestApi::sqlite().await.unwrap();
    let token = api
        .signed_up("ada@example.com", "correct horse battery")
        .await;
    let enqueue = |body: Value| {
        let api = &api;
        let token = token.clone();
        async move {
            api.request(
                axum::http::Method::POST,
                "/v1/generations",
                Some(body),
                Some(&token),
            )
            .await
        }
    };
    // No secret yet: deliveries could not be signed.
    let r = enqueue(json!({"prompt": "p", "webhook_url": "https://hooks.example.com/x"})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["code"], "webhook_secret_missing");
    let r = api
        .request(
            axum::http::Method::POST,
            "/v1/me/webhook-secret",
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 201);

    for (url, code) in [
        ("https://127.0.0.1/hook", "address_not_allowed"),
        ("https://[::1]/hook", "address_not_allowed"),
        ("https://169.254.169.254/latest", "address_not_allowed"),
        // A name that resolves to loopback is refused by what it resolves to.
        ("https://localhost/hook", "address_not_allowed"),
        ("http://hooks.example.com/x", "invalid_input"),
        ("https://user:pw@hooks.example.com/x", "invalid_input"),
        ("not a url", "invalid_input"),
    ] {
        let r = enqueue(json!({"prompt": "p", "webhook_url": url})).await;
        assert_eq!(r.status, 422, "{url}");
        assert_eq!(r.json()["code"], code, "{url}: {:?}", r.json());
    }
    let r = enqueue(json!({"prompt": "p", "webhook_events": "all"})).await;
    assert_eq!(r.status, 422);
    let r = enqueue(
        json!({"prompt": "p", "webhook_url": "https://93.184.215.14/x", "webhook_events": "some"}),
    )
    .await;
    assert_eq!(r.status, 422, "an unknown event set");
    // A public address is accepted, and the registration kept with the job.
    let r = enqueue(
        json!({"prompt": "p", "webhook_url": "https://93.184.215.14/x", "webhook_events": "all"}),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let id: uuid::Uuid = r.json()["id"].as_str().unwrap().parse().unwrap();
    let hook = api.store().webhook(id).await.unwrap().unwrap();
    assert_eq!(hook.url, "https://93.184.215.14/x");
    assert_eq!(hook.events, kiln_jobs::WebhookEvents::All);
    // Nothing was stored for the refused ones: this is the account's only job.
    let r = api
        .request(axum::http::Method::GET, "/v1/jobs", None, Some(&token))
        .await;
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 1);
}
