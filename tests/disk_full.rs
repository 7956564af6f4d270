//! The embedded default (SQLite) on a disk that fills up, through the real
//! binary: its database lives on an 8 MiB tmpfs that a test file fills.
//! Enqueues then answer 503 `storage_full` problem+json with
//! `Retry-After` (never a 500, never a panic), kiln logs what is wrong,
//! every job it accepted runs to the end, the refused requests go in once
//! space is freed, and the file passes `PRAGMA integrity_check`.
//!
//! Mounting needs root (CI runs as root); elsewhere the test skips, saying
//! so. On Postgres the server itself raises `53100 disk_full` and the API
//! answers the same way.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Client, kiln};
use serde_json::{Value, json};
use sqlx::Connection;

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk has no room left; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        // tmpfs hands out whole pages: a page at a time leaves none over.
        while file.write_all(&chunk).and_then(|_| file.flush()).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process killed a moment ago may still hold a file.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// One enqueue with its key; its status and body.
async fn generate(client: &Client, key: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = client
        .request(reqwest::Method::POST, "/v1/generations")
        .header("Idempotency-Key", key)
        .json(&json!({"prompt": "a full cellar", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer {status} with a body that is not JSON: {text:?}"));
    (status, body, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_refuses_writes_clearly_and_recovers_intact() {
    let disk = match SmallDisk::mount("8m") {
        Ok(disk) => disk,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs ({e}); CI runs the tests as root"
            );
            eprintln!("skipped: cannot mount a tmpfs ({e}); run as root");
            return;
        }
    };
    let file = disk.path().join("kiln.db");
    let mut kiln = kiln(&[])
        .database(&format!("sqlite:{}", file.display()))
        .env("KILN_CREDITS_SIGNUP_GRANT", 100_000)
        .env("KILN_WORKER_POLL_INTERVAL_MS", 200)
        // Jobs whose success could not be written run again soon.
        .env("KILN_WORKER_LEASE_MS", 6_000)
        .spawn();
    kiln.wait_healthy().await;
    let ada = Client::signed_up(&kiln, "ada.full@example.com").await;
    let (status, body, _) = generate(&ada, "before").await;
    assert_eq!(status, 202, "{body}");
    let first = ada.wait_final(body["id"].as_str().unwrap()).await;
    assert_eq!(first["state"], "succeeded", "{first}");

    // The disk fills; enqueues go on until some are refused (the WAL may
    // hold a few more first).
    let filler = disk.fill();
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for n in 0.. {
        let key = format!("full-{n}");
        let (status, body, headers) = generate(&ada, &key).await;
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(body["code"], "storage_full", "{body}");
                assert_eq!(body["status"], 503, "{body}");
                assert!(body["detail"].is_string() && body["title"].is_string());
                assert_eq!(headers["content-type"], "application/problem+json");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                refused.push(key);
            }
            other => panic!("answer {other} on a full disk: {body}"),
        }
        if refused.len() >= 5 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no enqueue was refused in 20 s on a full disk ({} accepted)",
            accepted.len()
        );
    }
    // Reads still answer.
    let r = ada.get("/v1/jobs?limit=5").await;
    assert_eq!(r.status(), 200);
    let log = kiln.log_text();
    assert!(
        log.contains("the database's disk is full"),
        "no clear message in the log:\n{log}"
    );

    // Space comes back: the refused requests go in, once, and every
    // accepted job runs to the end.
    std::fs::remove_file(filler).unwrap();
    for key in &refused {
        let (status, body, _) = generate(&ada, key).await;
        assert_eq!(status, 202, "{key}: {body}");
        accepted.push(body["id"].as_str().unwrap().to_owned());
        let (again, repeat, _) = generate(&ada, key).await;
        assert_eq!(again, 200, "{key}: {repeat}\n{}", kiln.log_text());
        assert_eq!(repeat["id"], body["id"]);
    }
    for id in &accepted {
        let job = ada.wait_final(id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let log = kiln.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let reopened = log.matches("reopening it").count();

    kiln.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(kiln.wait_exit(Duration::from_secs(30)).await.success());
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", file.display()))
        .await
        .unwrap();
    let check: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, ["ok"]);
    // What was accepted is in the file, not only in what the process saw:
    // the job before the disk filled and every accepted one, succeeded.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM finished_jobs WHERE kind = 'generate_image' AND state = 'succeeded'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored as usize, accepted.len() + 1);
    conn.close().await.unwrap();
    eprintln!(
        "disk full: {} enqueues accepted and run, {} refused with storage_full and accepted \
         after space was freed; the SQLite writer was reopened {reopened} times",
        accepted.len() - refused.len(),
        refused.len()
    );
}

/// Postgres answering `53100 disk_full`, raised by the server itself (a
/// trigger on `jobs`, as an INSERT that cannot extend its file would):
/// the same 503 `storage_full` with `Retry-After`, and the request goes in
/// once the disk has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_disk_refuses_enqueues_clearly_and_recovers() {
    let db = kiln_store::testing::TestDatabase::postgres().await;
    let k = kiln(&[]).database(&db.url).spawn();
    k.wait_healthy().await;
    let ada = Client::signed_up(&k, "ada.full@example.com").await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'could not extend file \"base/16384/16385\": No space left on device'
                 USING ERRCODE = 'disk_full';
         END $$;
         CREATE TRIGGER test_disk_full BEFORE INSERT ON jobs
             FOR EACH ROW EXECUTE FUNCTION test_disk_full();",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let (status, body, headers) = generate(&ada, "pg-full").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage_full", "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // The disk's own words are for the log, not for the client.
    assert!(!body.to_string().contains("base/16384"), "{body}");

    sqlx::raw_sql("DROP TRIGGER test_disk_full ON jobs")
        .execute(&mut conn)
        .await
        .unwrap();
    let (status, body, _) = generate(&ada, "pg-full").await;
    assert_eq!(status, 202, "{body}");
    let again = generate(&ada, "pg-full").await;
    assert_eq!(
        (again.0, &again.1["id"]),
        (200, &body["id"]),
        "went in once"
    );
    assert_eq!(
        ada.wait_final(body["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
}
