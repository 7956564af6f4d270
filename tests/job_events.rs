//! `GET /v1/jobs/{id}/events`: a job's changes as server-sent events,
//! through real `kiln` processes on PostgreSQL. The stream is served by
//! another `serve` process than the one that enqueued, resumes with
//! `Last-Event-ID` without repeating, is for the owner only, and hears of
//! a change the process missed while it had lost the database.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{Client, Kiln, SHARED_CODE_KEY, Through, kiln};
use futures::StreamExt;
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// Reads a stream until it ends (or `within` passes), parsing its events;
/// comments (heartbeats) are skipped.
async fn read_events(r: reqwest::Response, within: Duration) -> Vec<Sse> {
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            Ok(None) => break,
            Err(_) => panic!("the stream did not end within {within:?}: {text}"),
        }
    }
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| !l.starts_with(':') && !l.is_empty()))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim_start().to_owned())
                    .unwrap_or_default()
            };
            Sse {
                id: field("id:"),
                event: field("event:"),
                data: serde_json::from_str(&field("data:")).unwrap(),
            }
        })
        .collect()
}

fn process(db: &TestDatabase, role: &str) -> Kiln {
    kiln(&[role])
        .database(&db.url)
        .env("KILN_API_CODE_KEY", SHARED_CODE_KEY)
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_changes_stream_from_another_serve_process_and_resume_without_repeats() {
    let db = TestDatabase::postgres().await;
    let (a, b, worker) = (
        process(&db, "serve"),
        process(&db, "serve"),
        process(&db, "work"),
    );
    for k in [&a, &b, &worker] {
        k.wait_healthy().await;
    }
    let ada = Client::signed_up(
        &Through {
            api: &a,
            mailer: &worker,
        },
        "ada@example.com",
    )
    .await;
    let mut on_b = Client::new(&b.url(""));
    on_b.token = ada.token.clone();

    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "a kiln at dawn", "n": 2}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let path = format!("/v1/jobs/{}/events", job["id"].as_str().unwrap());

    let events = read_events(on_b.get(&path).await, Duration::from_secs(60)).await;
    let last = events.last().unwrap();
    eprintln!(
        "events: {:?}",
        events.iter().map(|e| (&e.event, &e.id)).collect::<Vec<_>>()
    );
    assert_eq!(last.event, "done", "{events:?}");
    assert_eq!(last.data["state"], "succeeded");
    assert_eq!(last.data["result"]["images"].as_array().unwrap().len(), 2);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.event == "change"),
        "{events:?}"
    );
    // Each event a different snapshot, each with its id.
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(ids.iter().all(|id| !id.is_empty()));
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{events:?}");

    // Resumed after the last event: nothing to repeat, the stream ends.
    let r = on_b
        .request(reqwest::Method::GET, &path)
        .header("Last-Event-ID", &last.id)
        .send()
        .await
        .unwrap();
    assert!(read_events(r, Duration::from_secs(10)).await.is_empty());
    // Resumed after an earlier one: only what came after, the end.
    if events.len() > 1 {
        let r = ada
            .request(reqwest::Method::GET, &path)
            .header("Last-Event-ID", &events[0].id)
            .send()
            .await
            .unwrap();
        let resumed = read_events(r, Duration::from_secs(10)).await;
        assert_eq!(resumed.len(), 1, "{resumed:?}");
        assert_eq!(resumed[0].id, last.id);
    }

    // Another user's job is not there for them.
    let bob = Client::signed_up(
        &Through {
            api: &b,
            mailer: &worker,
        },
        "bob@example.com",
    )
    .await;
    let r = bob.get(&path).await;
    assert_eq!(r.status(), 404);
    let r = Client::new(&b.url("")).get(&path).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holds_ten_streams_and_a_closed_one_frees_a_place() {
    // No worker: the job waits, and its streams stay open.
    let db = TestDatabase::postgres().await;
    let (api, worker) = (process(&db, "serve"), process(&db, "work"));
    api.wait_healthy().await;
    worker.wait_healthy().await;
    let ada = Client::signed_up(
        &Through {
            api: &api,
            mailer: &worker,
        },
        "ada@example.com",
    )
    .await;
    drop(worker);
    let r = ada
        .post("/v1/generations", json!({"prompt": "a kiln at dusk"}))
        .await;
    let job: Value = r.json().await.unwrap();
    let path = format!("/v1/jobs/{}/events", job["id"].as_str().unwrap());

    let mut open = Vec::new();
    for _ in 0..10 {
        let r = ada.get(&path).await;
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = ada.get(&path).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The first event of an open stream is the job as it is.
    let first = open.pop().unwrap();
    let mut body = first.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk).into_owned();
    assert!(text.contains("event: change"), "{text}");
    assert!(text.contains("\"state\":\"available\""), "{text}");
    drop(body);
    // The server notices the closed connection when it next writes to it
    // (its heartbeat, at most 15 s later).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = ada.get(&path).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "a closed stream kept its place");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A change made while a `serve` process had lost the database (and with
/// it the notifications) still reaches the long-polls and streams waiting
/// there, as soon as it listens again, not when they time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_missed_while_the_database_was_away_reaches_waiting_clients() {
    let db = TestDatabase::postgres().await;
    let mut postgres = common::Outage::down("127.0.0.1:5432".parse().unwrap());
    postgres.up().await;
    let name = db.url.rsplit('/').next().unwrap();
    // Its workers send sign-up codes but leave generations queued.
    let k = kiln(&[])
        .database(&format!("postgres://postgres@{}/{name}", postgres.addr))
        .env("KILN_WORKER_QUEUES", "[notifications]")
        .spawn();
    k.wait_healthy().await;
    let ada = Client::signed_up(&k, "ada@example.com").await;
    let id = ada
        .accepted("/v1/generations", json!({"prompt": "a kiln at dusk"}))
        .await;

    let stream = ada.get(&format!("/v1/jobs/{id}/events")).await;
    let stream = tokio::spawn(read_events(stream, Duration::from_secs(60)));
    let poll = {
        let (ada, id) = (ada.clone(), id.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = ada.get(&format!("/v1/jobs/{id}?wait=30")).await;
            (r.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    postgres.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Cancelled behind the process's back: its NOTIFY goes nowhere.
    let store = db.store().await.unwrap();
    store.cancel(id.parse().unwrap(), None).await.unwrap();
    postgres.up().await;

    let events = stream.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{events:?}");
    assert_eq!(last.data["state"], "cancelled");
    let (job, waited) = poll.await.unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
    // Answered on the reconnect, well before the 30 s wait ran out.
    assert!(
        waited < Duration::from_secs(25),
        "answered after {waited:?}"
    );
}
