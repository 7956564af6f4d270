//! Personal data at rest, through the real binary: after sign-ups by email
//! and by phone, verifications, logins from new IPs (their notices) and a
//! purchase, no table of the database and no line of the log holds an
//! address or a code in the clear; and rotating the key (configured keys
//! on Postgres, generated key files on the embedded default) keeps every
//! account able to sign in.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Client, Kiln, KilnBuilder, code_in, kiln};
use kiln_store::testing::{TEST_INDEX_KEY, TEST_PII_KEY, TestDatabase};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

const PASSWORD: &str = "correct horse battery";
const EMAIL: &str = "sealed.ada@example.com";
const PHONE: &str = "+4915112345678";
/// The key rotated to.
const K2: &str = "6b696c6e2d746573742d7069692d6b65792d74776f2d33322d62797465732121";

async fn started(builder: KilnBuilder) -> Kiln {
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

async fn stop(mut k: Kiln) -> String {
    k.signal(Signal::SIGTERM);
    k.wait_exit(Duration::from_secs(30)).await;
    k.log_text()
}

/// Signs up by phone, verifies with the texted code, signs in: the code.
async fn signed_up_by_phone(k: &Kiln) -> String {
    let c = Client::new(&k.url(""));
    let r = c
        .post(
            "/v1/auth/register",
            json!({"phone": PHONE, "password": PASSWORD, "birth_date": "1990-01-01"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let code = code_in(&k.wait_outbox(PHONE, 1).await).unwrap();
    let r = c
        .post("/v1/auth/verify", json!({"phone": PHONE, "code": code}))
        .await;
    assert_eq!(r.status(), 200);
    code
}

async fn login(k: &Kiln, field: &str, address: &str) -> u16 {
    reqwest::Client::new()
        .post(k.url("/v1/auth/login"))
        .header("x-forwarded-for", "198.51.100.23")
        .json(&json!({field: address, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every row of every table of the Postgres database, as JSON text.
async fn dump(url: &str) -> String {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut text = String::new();
    for table in tables {
        let sql = format!("SELECT coalesce(json_agg(t)::text, '') FROM \"{table}\" t");
        let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        text.push_str(&format!("{table}: {rows}\n"));
    }
    text
}

/// What must be nowhere: the addresses (the phone with and without its
/// `+`) and each code as a value or in a sentence.
fn assert_nothing_plain(what: &str, text: &str, codes: &[String]) {
    for needle in [EMAIL, PHONE, &PHONE[1..]] {
        assert!(!text.contains(needle), "{what} holds {needle}");
    }
    for code in codes {
        for shape in [
            format!("\"{code}\""),
            format!(" {code}"),
            format!("={code}"),
        ] {
            assert!(!text.contains(&shape), "{what} holds the code {code}");
        }
    }
}

fn keys(current: &str, with_k2: bool) -> impl Fn(KilnBuilder) -> KilnBuilder {
    let k2 = K2;
    let current = current.to_owned();
    move |b: KilnBuilder| {
        let keys = if with_k2 {
            format!("{{k1=\"{TEST_PII_KEY}\",k2=\"{k2}\"}}")
        } else {
            format!("{{k1=\"{TEST_PII_KEY}\"}}")
        };
        b.env("KILN_ENCRYPTION_KEYS", keys)
            .env("KILN_ENCRYPTION_INDEX_KEY", TEST_INDEX_KEY)
            .env("KILN_ENCRYPTION_CURRENT_KEY", &current)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_address_or_code_is_stored_or_logged_in_the_clear_and_rotation_keeps_logins() {
    let db = TestDatabase::postgres().await;
    let base = |b: KilnBuilder| {
        b.database(&db.url)
            .env("KILN_API_CLIENT_IP_HEADER", "x-forwarded-for")
            .env("KILN_LOG_LEVEL", "debug,sqlx=warn,hyper=info,h2=info")
    };
    let k = started(base(kiln(&[]))).await;
    let ada = Client::signed_up(&k, EMAIL).await;
    let email_code = code_in(&k.outbox_messages(EMAIL)[0]).unwrap();
    let phone_code = signed_up_by_phone(&k).await;
    // New-IP sign-ins (each sends a notice) and a purchase.
    assert_eq!(login(&k, "email", EMAIL).await, 200);
    assert_eq!(login(&k, "phone", PHONE).await, 200);
    let order: Value = ada
        .post("/v1/credits/checkout", json!({"pack": "small"}))
        .await
        .json()
        .await
        .unwrap();
    let paid = reqwest::Client::new()
        .post(order["checkout_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    k.wait_outbox(EMAIL, 2).await;
    k.wait_outbox(PHONE, 2).await;

    let codes = [email_code, phone_code];
    let log = stop(k).await;
    assert!(log.contains("credits purchased"), "the log is the full one");
    assert_nothing_plain("the log", &log, &codes);
    let tables = dump(&db.url).await;
    assert!(tables.contains("users: ["), "{tables}");
    assert_nothing_plain("the database", &tables, &codes);
    assert!(tables.contains("\"email_sealed\":\"k1:"), "sealed under k1");

    // Rotate: a second key becomes current and every account moves to it.
    let rotate = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["keys", "rotate", "--batch", "1"])
        .current_dir(tempfile::tempdir().unwrap().path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_DATABASE_URL", &db.url)
        .env("KILN_LOG_LEVEL", "warn")
        .env(
            "KILN_ENCRYPTION_KEYS",
            format!("{{k1=\"{TEST_PII_KEY}\",k2=\"{K2}\"}}"),
        )
        .env("KILN_ENCRYPTION_INDEX_KEY", TEST_INDEX_KEY)
        .env("KILN_ENCRYPTION_CURRENT_KEY", "k2")
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&rotate.stdout).trim(),
        "resealed 2 of 2 accounts"
    );
    let tables = dump(&db.url).await;
    assert!(!tables.contains("_sealed\":\"k1:"), "nothing left under k1");
    assert_nothing_plain("the resealed database", &tables, &codes);

    let k = started(keys("k2", true)(base(kiln(&[])))).await;
    assert_eq!(login(&k, "email", EMAIL).await, 200);
    assert_eq!(login(&k, "phone", PHONE).await, 200);
    let mut again = Client::new(&k.url(""));
    again.token = ada.token.clone();
    let me: Value = again.get("/v1/me").await.json().await.unwrap();
    assert_eq!(me["email"], EMAIL);
    stop(k).await;

    // A process with other keys refuses to start on this database.
    let mut stranger = kiln(&[])
        .database(&db.url)
        .env("KILN_ENCRYPTION_INDEX_KEY", "ab".repeat(32))
        .spawn();
    let status = stranger.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        stranger
            .log_text()
            .contains("sealed under another index key"),
        "{}",
        stranger.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_makes_its_keys_and_rotates_them() {
    let dir = tempfile::tempdir().unwrap();
    let k = started(kiln(&[]).own_keys().cwd(dir.path())).await;
    Client::signed_up(&k, EMAIL).await;
    stop(k).await;
    let keys = dir.path().join("data/pii-keys");
    assert!(keys.join("index.key").exists() && keys.join("k1.key").exists());
    let db_bytes = std::fs::read(dir.path().join("data/kiln.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data/kiln.db-wal")).unwrap_or_default();
    for bytes in [&db_bytes, &wal] {
        assert!(
            !bytes.windows(EMAIL.len()).any(|w| w == EMAIL.as_bytes()),
            "the SQLite file holds the address"
        );
    }

    let rotate = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["keys", "rotate"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert!(String::from_utf8_lossy(&rotate.stderr).contains("new key k2"));
    assert_eq!(
        String::from_utf8_lossy(&rotate.stdout).trim(),
        "resealed 1 of 1 accounts"
    );
    assert!(keys.join("k2.key").exists());

    let k = started(kiln(&[]).own_keys().cwd(dir.path())).await;
    assert_eq!(login(&k, "email", EMAIL).await, 200);
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite:{}",
        dir.path().join("data/kiln.db").display()
    ))
    .await
    .unwrap();
    let sealed: String = sqlx::query("SELECT email_sealed FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert!(sealed.starts_with("k2:"), "{sealed}");
    stop(k).await;
}
