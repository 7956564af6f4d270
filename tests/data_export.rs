//! A data export through the real binary on the embedded default (SQLite,
//! local files), as its owner asks for one: POST, poll, download the ZIP
//! by its signed link without a token, unzip it. One export at a time,
//! nobody else's, and a link that stops working when its life is over.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{io::Read, path::Path, time::Duration};

use common::{Client, Kiln, assert_problem, kiln};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The embedded default in `dir`, with these settings.
async fn start(dir: &Path, env: &[(&str, &str)]) -> Kiln {
    let mut builder = kiln(&[]).cwd(dir);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

async fn stop(mut k: Kiln) {
    k.signal(Signal::SIGTERM);
    k.wait_exit(Duration::from_secs(30)).await;
}

/// `client`'s token on another process (a restart moves the port).
fn on(k: &Kiln, client: &Client) -> Client {
    let mut moved = Client::new(&k.url(""));
    moved.token = client.token.clone();
    moved
}

async fn export(client: &Client, id: &str) -> reqwest::Response {
    client.get(&format!("/v1/me/exports/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_exports_its_data_and_downloads_it_by_a_signed_link() {
    let cwd = tempfile::tempdir().unwrap();
    // First without a worker for exports, so one stays unfinished.
    let held = [(
        "KILN_WORKER_QUEUES",
        "[default,generation,maintenance,notifications]",
    )];
    let k = start(cwd.path(), &held).await;
    let ada = Client::signed_up(&k, "ada@example.com").await;
    let bob = Client::signed_up(&k, "bob@example.com").await;
    let r = ada
        .post(
            "/v1/generations",
            json!({"prompt": "a kiln at night", "size": "256x256"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let done = ada.wait_final(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let image = done["result"]["images"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = ada.post("/v1/me/exports", json!({})).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let queued: Value = r.json().await.unwrap();
    let id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/me/exports/{id}"));
    assert_eq!(queued["kind"], "data_export");
    // A second one while the first is unfinished: refused, naming it.
    let problem =
        assert_problem(ada.post("/v1/me/exports", json!({})).await, 409, "conflict").await;
    assert!(
        problem["detail"].as_str().unwrap().contains(&id),
        "{problem}"
    );
    // Nobody else's.
    assert_problem(export(&bob, &id).await, 404, "not_found").await;
    let unfinished: Value = export(&ada, &id).await.json().await.unwrap();
    assert_eq!(unfinished["result"], Value::Null, "{unfinished}");
    stop(k).await;

    // Now with every queue: the export runs.
    let k = start(cwd.path(), &[]).await;
    let ada = on(&k, &ada);
    let bob = on(&k, &bob);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job: Value = export(&ada, &id).await.json().await.unwrap();
        if job["state"] == "succeeded" {
            break job;
        }
        assert!(
            !matches!(job["state"].as_str(), Some("failed" | "cancelled")),
            "{job}"
        );
        assert!(tokio::time::Instant::now() < deadline, "never done: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_problem(export(&bob, &id).await, 404, "not_found").await;
    let result = &done["result"];
    assert_eq!(result["expired"], false, "{done}");
    assert!(result["expires_at"].is_string(), "{done}");
    assert!(result.get("object_key").is_none(), "the key stays inside");
    let url = result["url"].as_str().unwrap();
    // The link is the capability: no token.
    let r = reqwest::get(k.url(url)).await.unwrap();
    assert_eq!(r.status(), 200);
    let zip = r.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
    let mut read = |name: &str| {
        let mut file = archive.by_name(name).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    let manifest: Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    assert_eq!(manifest["counts"]["generations.json"], 1, "{manifest}");
    assert_eq!(manifest["counts"]["images"], 1, "{manifest}");
    let account: Value = serde_json::from_slice(&read("account.json")).unwrap();
    assert_eq!(account["email"], "ada@example.com");
    let png = read(&format!("images/{image}.png"));
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    // The next export may start now.
    let r = ada.post("/v1/me/exports", json!({})).await;
    assert_eq!(r.status(), 202);
    stop(k).await;

    // A link lives `api.export_link_ttl_secs`, then the files route refuses it.
    let k = start(cwd.path(), &[("KILN_API_EXPORT_LINK_TTL_SECS", "1")]).await;
    let ada = on(&k, &ada);
    let short: Value = export(&ada, &id).await.json().await.unwrap();
    let url = short["result"]["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_problem(reqwest::get(k.url(&url)).await.unwrap(), 403, "url_expired").await;
    // A fresh read signs a fresh link.
    let fresh: Value = export(&ada, &id).await.json().await.unwrap();
    assert_ne!(fresh["result"]["url"], Value::String(url), "{fresh}");
    stop(k).await;
}
