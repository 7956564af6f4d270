//! Traces across the queue: a client's request to a `kiln serve` process
//! carries a W3C `traceparent`; the generation it enqueues is run by a
//! `kiln work` process, whose spans (the claim, the job, every provider
//! call) continue that trace. Both export by OTLP/HTTP to a local
//! collector.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use common::{Client, Kiln, SHARED_CODE_KEY, Through, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

/// One exported span, as the collector saw it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
}

/// An OTLP/HTTP collector on 127.0.0.1 that keeps every span it is sent
/// (JSON encoding).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, addr)
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let export: Value = serde_json::from_slice(&body).unwrap();
    let mut spans = collector.spans.lock().unwrap();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or("").to_lowercase();
                spans.push(Span {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                });
            }
        }
    }
    "{}"
}

fn process(db: &TestDatabase, role: &str, collector: Option<SocketAddr>) -> Kiln {
    let mut builder = kiln(&[role])
        .database(&db.url)
        .env("KILN_API_CODE_KEY", SHARED_CODE_KEY);
    if let Some(collector) = collector {
        builder = builder
            .env(
                "KILN_TELEMETRY_OTLP_ENDPOINT",
                format!("http://{collector}"),
            )
            // Export each batch within a second (the SDK's own variable).
            .env("OTEL_BSP_SCHEDULE_DELAY", 500);
    }
    builder.spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_trace_continues_into_the_worker_that_runs_its_job() {
    let db = TestDatabase::postgres().await;
    let (collector, addr) = Collector::start().await;
    let api = process(&db, "serve", Some(addr));
    let worker = process(&db, "work", Some(addr));
    api.wait_healthy().await;
    worker.wait_healthy().await;
    let ada = Client::signed_up(
        &Through {
            api: &api,
            mailer: &worker,
        },
        "ada.traces@example.com",
    )
    .await;

    let trace_id = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let client_span = "00f067aa0ba902b7";
    let r = ada
        .request(reqwest::Method::POST, "/v1/generations")
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"prompt": "a lighthouse", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let done = ada.wait_final(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded");

    let wanted = [
        "post /v1/generations",
        "claim",
        "run generate_image",
        "provider images",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.of_trace(&trace_id);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if wanted.iter().all(|w| names.contains(w)) {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans of the trace: {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let request = named("post /v1/generations");
    assert_eq!(
        request.parent_span_id, client_span,
        "the client's span is its parent"
    );
    let run = named("run generate_image");
    assert_eq!(
        run.parent_span_id, request.span_id,
        "the job continues the request"
    );
    assert_eq!(named("claim").parent_span_id, run.span_id);
    for provider in spans.iter().filter(|s| s.name.starts_with("provider ")) {
        assert_eq!(provider.parent_span_id, run.span_id, "{provider:?}");
    }
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "provider moderation")
            .count()
            >= 2,
        "the prompt and the image are moderated: {spans:?}"
    );
}
