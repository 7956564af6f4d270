//! The access log through HTTP: each sign-up, verification, login, failed
//! login, logout and first use from a new IP, with the client's IP and
//! user agent; the IP from a proxy's header only when one is configured.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Client, kiln};
use serde_json::{Value, json};

async fn events(client: &Client) -> Vec<Value> {
    let page: Value = client
        .get("/v1/me/access-log?limit=100")
        .await
        .json()
        .await
        .unwrap();
    let mut entries = page["entries"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

fn names(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_their_own_sign_up_logins_and_logouts_with_ip_and_agent() {
    let k = kiln(&[]).spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "watcher@example.com").await;
    // A wrong password, a forged proxy header (not configured: ignored),
    // a second session, and its logout.
    let wrong = client
        .post(
            "/v1/auth/login",
            json!({"email": "watcher@example.com", "password": "not the password"}),
        )
        .await;
    assert_eq!(wrong.status(), 401);
    let second = client
        .request(reqwest::Method::POST, "/v1/auth/login")
        .header("user-agent", "kiln-test/1.0")
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"email": "watcher@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let token: Value = second.json().await.unwrap();
    let mut other = client.clone();
    other.token = Some(token["token"].as_str().unwrap().to_owned());
    let r = other
        .request(reqwest::Method::POST, "/v1/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let entries = events(&client).await;
    assert_eq!(
        names(&entries),
        [
            "register",
            // The address it signed up from is the account's first IP.
            "new_ip",
            "verify",
            "login",
            "login_failed",
            "login",
            "logout"
        ]
    );
    for e in &entries {
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
    }
    assert_eq!(entries[5]["user_agent"], "kiln-test/1.0");

    // Someone else sees none of it.
    let stranger = Client::signed_up(&k, "stranger@example.com").await;
    let theirs = events(&stranger).await;
    assert_eq!(names(&theirs), ["register", "new_ip", "verify", "login"]);
    assert_eq!(
        client
            .request(reqwest::Method::GET, "/v1/me/access-log")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let anonymous = Client::new(&client.base).get("/v1/me/access-log").await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_configured_proxy_the_ip_is_the_last_forwarded_address() {
    let k = kiln(&[])
        .env("KILN_API_CLIENT_IP_HEADER", "X-Forwarded-For")
        .spawn();
    k.wait_http(k.http, "/readyz").await;
    let client = Client::signed_up(&k, "proxied@example.com").await;
    // Sign-up went through no proxy here: no header, so no IP.
    let entries = events(&client).await;
    assert!(entries.iter().all(|e| e["ip"].is_null()), "{entries:?}");

    // The proxy appends the client's address to whatever the client sent.
    let r = client
        .request(reqwest::Method::GET, "/v1/jobs")
        .header("x-forwarded-for", "10.9.9.9, 198.51.100.23")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let entries = events(&client).await;
    let last = entries.last().unwrap();
    assert_eq!(
        (&last["event"], &last["ip"]),
        (&json!("new_ip"), &json!("198.51.100.23"))
    );
    // The same address again is not new.
    client
        .request(reqwest::Method::GET, "/v1/jobs")
        .header("x-forwarded-for", "198.51.100.23")
        .send()
        .await
        .unwrap();
    assert_eq!(events(&client).await.len(), entries.len());
}
