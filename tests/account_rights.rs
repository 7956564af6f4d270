//! The account's owner, through the real binary on the embedded default:
//! reading the account, correcting its address (only once the new one is
//! confirmed by a code sent there), restricting it (no new jobs, no
//! optional notices), and the notice of a sign-in from a new IP.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Client, Kiln, KilnBuilder, assert_problem, code_in, kiln};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

async fn started(builder: KilnBuilder) -> Kiln {
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

async fn patch(client: &Client, body: Value) -> reqwest::Response {
    client
        .request(reqwest::Method::PATCH, "/v1/me")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login_from(k: &Kiln, email: &str, ip: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(k.url("/v1/auth/login"))
        .header("x-forwarded-for", ip)
        .header("user-agent", "rights-test/1.0")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

fn events(log: &Value) -> Vec<String> {
    log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reads_and_corrects_the_account_only_through_the_new_address() {
    // Bob's sign-up code would hold back the correction to his address.
    let k = started(kiln(&[]).env("KILN_API_CODE_RESEND_INTERVAL_SECS", 0)).await;
    let ada = Client::signed_up(&k, "ada@example.com").await;
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["phone"], Value::Null);
    assert_eq!(me["birth_date"], "1990-01-01");
    assert_eq!(me["restricted"], false);
    assert_eq!(me["operator"], false);
    assert!(me["verified_at"].is_string());
    assert_eq!(me["referral_code"].as_str().unwrap().len(), 10, "{me}");

    // Asking: a code goes to the new address; nothing changes yet.
    let r = patch(&ada, json!({"email": "ada.new@example.com"})).await;
    assert_eq!(r.status(), 202);
    let message = k.wait_outbox("ada.new@example.com", 1).await;
    let code = code_in(&message).unwrap();
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    assert_eq!(me["email"], "ada@example.com");

    // The wrong code, then a code given for another address: refused.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = patch(&ada, json!({"email": "ada.new@example.com", "code": wrong})).await;
    assert_problem(r, 422, "invalid_code").await;
    let r = patch(&ada, json!({"email": "other@example.com", "code": code})).await;
    assert_problem(r, 422, "invalid_code").await;

    let r = patch(&ada, json!({"email": "ada.new@example.com", "code": code})).await;
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["email"], "ada.new@example.com");
    // The code is spent, the old address no longer signs in, the new does.
    let r = patch(&ada, json!({"email": "ada.new@example.com", "code": code})).await;
    assert_problem(r, 422, "invalid_code").await;
    let c = Client::new(&k.url(""));
    let old = c
        .post(
            "/v1/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(old, 401, "unauthorized").await;
    let new = c
        .post(
            "/v1/auth/login",
            json!({"email": "ada.new@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(new.status(), 200);

    // An address with another account: the same answer, and no code.
    let _bob = Client::signed_up(&k, "bob@example.com").await;
    let sent_to_bob = k.outbox_messages("bob@example.com").len();
    let r = patch(&ada, json!({"email": "bob@example.com"})).await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(k.outbox_messages("bob@example.com").len(), sent_to_bob);
    let r = patch(&ada, json!({"email": "bob@example.com", "code": "123456"})).await;
    assert_problem(r, 422, "invalid_code").await;

    // Adding a phone works the same way, by SMS.
    let r = patch(&ada, json!({"phone": "+4915112345678"})).await;
    assert_eq!(r.status(), 202);
    let sms = k.wait_outbox("+4915112345678", 1).await;
    let r = patch(
        &ada,
        json!({"phone": "+4915112345678", "code": code_in(&sms).unwrap()}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(
        (me["email"].as_str(), me["phone"].as_str()),
        (Some("ada.new@example.com"), Some("+4915112345678"))
    );

    // Bad corrections.
    for body in [
        json!({}),
        json!({"email": "x@example.com", "phone": "+4915112345679"}),
        json!({"email": "ada.new@example.com"}),
        json!({"email": "not an address"}),
        json!({"name": "Ada"}),
    ] {
        let r = patch(&ada, body.clone()).await;
        assert!(
            [400, 422].contains(&r.status().as_u16()),
            "{body}: {}",
            r.status()
        );
    }
    let log: Value = ada
        .get("/v1/me/access-log?limit=100")
        .await
        .json()
        .await
        .unwrap();
    let events = events(&log);
    assert!(
        events.contains(&"contact_change_requested".to_owned()),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "contact_changed").count(),
        2,
        "{events:?}"
    );
    let anonymous = Client::new(&k.url(""));
    assert_problem(anonymous.get("/v1/me").await, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_account_starts_no_jobs_until_it_is_lifted() {
    let k = started(kiln(&[])).await;
    let ada = Client::signed_up(&k, "ada@example.com").await;
    let restrict = |method| ada.request(method, "/v1/me/restriction").send();
    assert_eq!(restrict(reqwest::Method::POST).await.unwrap().status(), 204);
    // Idempotent.
    assert_eq!(restrict(reqwest::Method::POST).await.unwrap().status(), 204);
    let me: Value = ada.get("/v1/me").await.json().await.unwrap();
    assert_eq!(me["restricted"], true);
    assert!(me["restricted_at"].is_string());

    let r = ada
        .post("/v1/generations", json!({"prompt": "a heron"}))
        .await;
    assert_problem(r, 403, "restricted").await;
    let r = ada
        .post(
            "/v1/generations/batch",
            json!({"items": [{"prompt": "a heron"}]}),
        )
        .await;
    assert_problem(r, 403, "restricted").await;
    let r = ada
        .post(
            "/v1/upscales",
            json!({"image_id": "0190b5a4-58b4-7a7e-8d6c-6d2b3f0c9a11"}),
        )
        .await;
    assert_problem(r, 403, "restricted").await;
    // Reading stays possible, and nothing was reserved.
    let credits: Value = ada.get("/v1/credits").await.json().await.unwrap();
    assert_eq!(
        (credits["balance"].as_i64(), credits["reserved"].as_i64()),
        (Some(50), Some(0))
    );

    assert_eq!(
        restrict(reqwest::Method::DELETE).await.unwrap().status(),
        204
    );
    let r = ada
        .post("/v1/generations", json!({"prompt": "a heron"}))
        .await;
    assert_eq!(r.status(), 202);
    let log: Value = ada.get("/v1/me/access-log").await.json().await.unwrap();
    let events = events(&log);
    assert_eq!(
        events.iter().filter(|e| *e == "restricted").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "unrestricted").count(),
        1,
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_from_a_new_ip_sends_a_notice_unless_restricted() {
    let k = started(kiln(&[]).env("KILN_API_CLIENT_IP_HEADER", "x-forwarded-for")).await;
    let ada = Client::signed_up(&k, "ada@example.com").await;
    let before = k.outbox_messages("ada@example.com").len();

    assert_eq!(
        login_from(&k, "ada@example.com", "198.51.100.7")
            .await
            .status(),
        200
    );
    let notice = k.wait_outbox("ada@example.com", before + 1).await;
    assert!(notice.contains("New sign-in"), "{notice}");
    assert!(notice.contains("198.51.100.7"), "{notice}");
    assert!(notice.contains("rights-test/1.0"), "{notice}");

    // The same IP again, from another process's point of view too: nothing.
    assert_eq!(
        login_from(&k, "ada@example.com", "198.51.100.7")
            .await
            .status(),
        200
    );
    assert_eq!(
        login_from(&k, "ada@example.com", "203.0.113.9")
            .await
            .status(),
        200
    );
    k.wait_outbox("ada@example.com", before + 2).await;

    // Restricted: a sign-in from a new IP is logged but not notified.
    let r = ada
        .request(reqwest::Method::POST, "/v1/me/restriction")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        login_from(&k, "ada@example.com", "192.0.2.44")
            .await
            .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(k.outbox_messages("ada@example.com").len(), before + 2);
    let log: Value = ada
        .get("/v1/me/access-log?limit=100")
        .await
        .json()
        .await
        .unwrap();
    let new_ips: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "new_ip")
        .map(|e| e["ip"].as_str().unwrap())
        .collect();
    assert_eq!(new_ips, ["192.0.2.44", "203.0.113.9", "198.51.100.7"]);
    // The queued job carried the entry's id, never the IP.
    let jobs: Value = ada.get("/v1/jobs?limit=100").await.json().await.unwrap();
    assert!(!jobs.to_string().contains("198.51.100.7"), "{jobs}");
}
