//! Deleting an account through the real binary on PostgreSQL, as its
//! owner does: the password is asked, every token stops at once, the
//! address can register again, and once `account_purge` ran no row or
//! object of the account is left.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Client, assert_problem, code_in, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

async fn delete_me(client: &Client, password: &str) -> reqwest::Response {
    client
        .request(reqwest::Method::DELETE, "/v1/me")
        .json(&json!({ "password": password }))
        .send()
        .await
        .unwrap()
}

/// Every row, in every table, whose text mentions `needle`, as
/// `table: row`.
async fn rows_mentioning(pool: &sqlx::PgPool, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let sql = format!("SELECT x::text FROM \"{table}\" x WHERE x::text LIKE '%' || $1 || '%'");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_all(pool)
            .await
            .unwrap();
        found.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
    }
    found
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_signed_out_at_once_and_erased_to_the_last_row() {
    let db = TestDatabase::postgres().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // The address signs up again within a minute of its first code.
    let k = kiln(&[])
        .database(&db.url)
        .cwd(cwd.path())
        .env("KILN_API_CODE_RESEND_INTERVAL_SECS", 0)
        .spawn();
    k.wait_http(k.http, "/readyz").await;

    let ada = Client::signed_up(&k, "ada@example.com").await;
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    let id = me["id"].as_str().unwrap().to_owned();
    // A generation, and an upscale of its image: objects in storage.
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
    let r = ada
        .post("/v1/upscales", json!({"image_id": image, "scale": 2}))
        .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let done = ada.wait_final(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let objects = cwd.path().join("data/objects");
    assert_eq!(files_under(&objects).len(), 2, "the image and its upscale");
    // A second session, as on another device.
    let r = reqwest::Client::new()
        .post(k.url("/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let mut phone = Client::new(&k.url(""));
    phone.token = Some(
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(phone.get("/v1/me").await.status(), 200);

    // The wrong password deletes nothing.
    assert_problem(
        delete_me(&ada, "not my password").await,
        403,
        "wrong_password",
    )
    .await;
    assert_eq!(ada.get("/v1/me").await.status(), 200);

    let r = delete_me(&ada, PASSWORD).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(accepted["status"], "deletion_requested");
    assert!(accepted["erased_by"].is_string(), "{accepted}");
    // Every token stops at once; the password no longer signs in.
    for client in [&ada, &phone] {
        assert_problem(client.get("/v1/me").await, 401, "unauthorized").await;
    }
    let r = reqwest::Client::new()
        .post(k.url("/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The purge runs at once: wait for the account's row to go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never erased");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing names the account but the record of the purge that erased
    // it (its job and key, which retention removes with finished jobs).
    let left: Vec<String> = rows_mentioning(&pool, &id)
        .await
        .into_iter()
        .filter(|row| !row.contains("account_purge"))
        .collect();
    assert!(
        left.is_empty(),
        "rows of the account remain:\n{}",
        left.join("\n")
    );
    assert!(
        files_under(&objects).is_empty(),
        "{:?}",
        files_under(&objects)
    );
    // The access log keeps the deletion request, detached from the person.
    let detached: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE user_id IS NULL AND event = 'deletion_requested'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(detached, 1);

    // The address is free: it signs up again, as a new account.
    let sent = k.outbox_messages("ada@example.com").len();
    let mut again = Client::new(&k.url(""));
    let r = again
        .post(
            "/v1/auth/register",
            json!({"email": "ada@example.com", "password": PASSWORD, "birth_date": "1990-01-01"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let code = code_in(&k.wait_outbox("ada@example.com", sent + 1).await).unwrap();
    let r = again
        .post(
            "/v1/auth/verify",
            json!({"email": "ada@example.com", "code": code}),
        )
        .await;
    assert_eq!(r.status(), 200, "the address was not free to verify");
    let r = again
        .post(
            "/v1/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 200);
    again.token = Some(
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let me: Value = again.get("/v1/me").await.json().await.unwrap();
    assert_ne!(me["id"].as_str().unwrap(), id);
}

/// Guessing the password to delete an account counts with the login's
/// wrong passwords: after 5, even the right one waits (429).
#[tokio::test]
async fn wrong_passwords_at_deletion_are_throttled_with_the_logins() {
    use axum::http::{Method, StatusCode};
    let api = kiln_api::testing::TestApi::sqlite().await.unwrap();
    let token = api.signed_up("ada@example.com", PASSWORD).await;
    let delete = |password: &'static str| {
        let (api, token) = (&api, token.clone());
        async move {
            api.request(
                Method::DELETE,
                "/v1/me",
                Some(json!({ "password": password })),
                Some(&token),
            )
            .await
        }
    };
    for _ in 0..5 {
        let r = delete("not my password").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.json()["code"], "wrong_password");
    }
    let r = delete(PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["code"], "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    // The account is still there.
    let me = api.request(Method::GET, "/v1/me", None, Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
}

#[tokio::test]
async fn an_account_is_deleted_with_a_fresh_code_instead_of_its_password() {
    use axum::http::{Method, StatusCode};
    // The sign-up's code went a moment ago: no wait before the next.
    let db = TestDatabase::sqlite();
    let config = kiln_api::ApiConfig {
        code_resend_interval_secs: 0,
        ..kiln_api::testing::test_config()
    };
    let api =
        kiln_api::testing::TestApi::with_config(db.store().await.unwrap(), config).keeping(db);
    let token = api.signed_up("ada@example.com", PASSWORD).await;
    let delete = |body: Value| {
        let (api, token) = (&api, token.clone());
        async move {
            api.request(Method::DELETE, "/v1/me", Some(body), Some(&token))
                .await
        }
    };
    // Neither, or both: refused.
    for body in [json!({}), json!({"password": PASSWORD, "code": "123456"})] {
        let r = delete(body.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(r.json()["code"], "invalid_input");
    }
    let r = api
        .request(Method::POST, "/v1/me/deletion-code", None, Some(&token))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let code = api.sent_code("ada@example.com").await.unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = delete(json!({ "code": wrong })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["code"], "invalid_code");
    let me = api.request(Method::GET, "/v1/me", None, Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK, "a wrong code deletes nothing");

    let r = delete(json!({ "code": code })).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json());
    assert_eq!(r.json()["status"], "deletion_requested");
    let me = api.request(Method::GET, "/v1/me", None, Some(&token)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    // A code works once.
    let r = delete(json!({ "code": code })).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
