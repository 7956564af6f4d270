//! Sign-up as a person does it, against the real binary: register, read
//! the code from the dev outbox, verify, sign in. Codes expire, are used
//! once and die after five wrong tries; an address that has an account
//! answers like a new one (and is told); codes to one address are
//! rate-limited, in one process and, through Redis, across processes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Client, Codes, Kiln, KilnBuilder, assert_problem, code_in, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

async fn started(builder: KilnBuilder) -> Kiln {
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

fn register_body(field: &str, address: &str) -> Value {
    json!({field: address, "password": PASSWORD, "birth_date": "1990-01-01"})
}

async fn register(c: &Client, field: &str, address: &str) -> reqwest::Response {
    c.post("/v1/auth/register", register_body(field, address))
        .await
}

async fn verify(c: &Client, field: &str, address: &str, code: &str) -> reqwest::Response {
    c.post("/v1/auth/verify", json!({field: address, "code": code}))
        .await
}

async fn login(c: &Client, field: &str, address: &str) -> reqwest::Response {
    c.post(
        "/v1/auth/login",
        json!({field: address, "password": PASSWORD}),
    )
    .await
}

/// Another six digits than `code`.
fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_by_email_and_by_phone_on_the_embedded_default() {
    let k = started(kiln(&[])).await;
    let c = Client::new(&k.url(""));
    for (field, address) in [("email", "ada@example.com"), ("phone", "+4915112345678")] {
        let r = register(&c, field, address).await;
        assert_eq!(r.status(), 202);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"status": "verification_sent"})
        );
        let message = k.wait_outbox(address, 1).await;
        let code = code_in(&message).unwrap_or_else(|| panic!("no code in {message}"));

        // The password is right, the address not verified: 403, and only
        // then (a wrong password is the usual 401).
        assert_problem(login(&c, field, address).await, 403, "unverified").await;
        let r = c
            .post(
                "/v1/auth/login",
                json!({field: address, "password": "not the password at all"}),
            )
            .await;
        assert_problem(r, 401, "unauthorized").await;

        let r = verify(&c, field, address, &code).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "verified");
        assert_eq!(body["referral_code"].as_str().unwrap().len(), 10);
        let r = login(&c, field, address).await;
        assert_eq!(r.status(), 200, "{field}");
        assert!(r.json::<Value>().await.unwrap()["token"].is_string());
    }
    // The email was an email with the code in its text and HTML.
    let mail = k.wait_outbox("ada@example.com", 1).await;
    assert!(
        mail.contains("Subject: Your kiln verification code"),
        "{mail}"
    );
    assert!(mail.contains("It expires in 10 minutes"), "{mail}");

    // Under 18: refused, nothing sent.
    let today = chrono::Utc::now().date_naive();
    let seventeen = today
        .checked_sub_months(chrono::Months::new(17 * 12))
        .unwrap();
    let r = c
        .post(
            "/v1/auth/register",
            json!({"email": "young@example.com", "password": PASSWORD, "birth_date": seventeen.to_string()}),
        )
        .await;
    assert_problem(r, 422, "underage").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(k.outbox_messages("young@example.com").is_empty());

    // No address or code in the log.
    let log = k.log_text();
    for secret in ["ada@example.com", "+4915112345678", PASSWORD] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    for message in k.outbox_messages("ada@example.com") {
        let code = code_in(&message).unwrap();
        assert!(!log.contains(&code), "a code in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_refused() {
    let k = started(kiln(&[]).env("KILN_API_CODE_TTL_SECS", 1)).await;
    let c = Client::new(&k.url(""));
    assert_eq!(
        register(&c, "email", "late@example.com").await.status(),
        202
    );
    let message = k.wait_outbox("late@example.com", 1).await;
    assert!(message.contains("expires in 1 minute."), "{message}");
    let code = code_in(&message).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = verify(&c, "email", "late@example.com", &code).await;
    let problem = assert_problem(r, 422, "invalid_code").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/auth/resend"),
        "{problem}"
    );
    assert_problem(
        login(&c, "email", "late@example.com").await,
        403,
        "unverified",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_is_used_once_and_dies_after_five_wrong_tries() {
    let k = started(kiln(&[]).env("KILN_API_CODE_RESEND_INTERVAL_SECS", 0)).await;
    let c = Client::new(&k.url(""));

    // Used once.
    register(&c, "email", "once@example.com").await;
    let code = k.latest_code("once@example.com").await;
    assert_eq!(
        verify(&c, "email", "once@example.com", &code)
            .await
            .status(),
        200
    );
    let r = verify(&c, "email", "once@example.com", &code).await;
    assert_problem(r, 422, "invalid_code").await;

    // Five wrong tries, then even the right code is refused.
    register(&c, "email", "guesser@example.com").await;
    let code = k.latest_code("guesser@example.com").await;
    for _ in 0..5 {
        let r = verify(&c, "email", "guesser@example.com", &wrong(&code)).await;
        assert_problem(r, 422, "invalid_code").await;
    }
    let refused = verify(&c, "email", "guesser@example.com", &code).await;
    assert_problem(refused, 422, "invalid_code").await;
    assert_problem(
        login(&c, "email", "guesser@example.com").await,
        403,
        "unverified",
    )
    .await;
    // Not six digits: a plain input error, no try spent.
    let r = verify(&c, "email", "guesser@example.com", "12ab56").await;
    assert_problem(r, 422, "invalid_input").await;

    // A new code works; the old one stays dead.
    let r = c
        .post("/v1/auth/resend", json!({"email": "guesser@example.com"}))
        .await;
    assert_eq!(r.status(), 202);
    let fresh = code_in(&k.wait_outbox("guesser@example.com", 2).await).unwrap();
    if fresh != code {
        let r = verify(&c, "email", "guesser@example.com", &code).await;
        assert_problem(r, 422, "invalid_code").await;
    }
    assert_eq!(
        verify(&c, "email", "guesser@example.com", &fresh)
            .await
            .status(),
        200
    );
    assert_eq!(
        login(&c, "email", "guesser@example.com").await.status(),
        200
    );

    // Unknown and verified addresses answer a guess the same way.
    for address in ["nobody@example.com", "once@example.com"] {
        let r = verify(&c, "email", address, "123456").await;
        assert_problem(r, 422, "invalid_code").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_has_an_account_answers_like_a_new_one() {
    // Codes may go to one address back to back here: the limit has its own test.
    let k = started(kiln(&[]).env("KILN_API_CODE_RESEND_INTERVAL_SECS", 0)).await;
    let owner = Client::signed_up(&k, "taken@example.com").await;
    assert!(owner.token.is_some());

    let c = Client::new(&k.url(""));
    let again = c
        .post(
            "/v1/auth/register",
            json!({"email": "Taken@Example.com", "password": "another long passphrase here", "birth_date": "1985-05-05"}),
        )
        .await;
    let fresh = register(&c, "email", "fresh@example.com").await;
    assert_eq!(again.status(), fresh.status());
    assert_eq!(again.status(), 202);
    let again_headers: Vec<String> = again.headers().keys().map(|h| h.to_string()).collect();
    let fresh_headers: Vec<String> = fresh.headers().keys().map(|h| h.to_string()).collect();
    assert_eq!(again_headers, fresh_headers);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        fresh.json::<Value>().await.unwrap()
    );

    // The owner is told, with no code; the new address gets a code.
    let notice = k.wait_outbox("taken@example.com", 2).await;
    assert!(
        notice.contains("Subject: Someone tried to sign up for kiln with your address"),
        "{notice}"
    );
    assert_eq!(code_in(&notice), None, "{notice}");
    assert!(code_in(&k.wait_outbox("fresh@example.com", 1).await).is_some());

    // Nothing about the account changed: the old password still works,
    // the other one does not.
    assert_eq!(login(&c, "email", "taken@example.com").await.status(), 200);
    let r = c
        .post(
            "/v1/auth/login",
            json!({"email": "taken@example.com", "password": "another long passphrase here"}),
        )
        .await;
    assert_problem(r, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_to_one_address_are_rate_limited() {
    let k = started(kiln(&[])).await;
    let c = Client::new(&k.url(""));
    assert_eq!(
        register(&c, "email", "eager@example.com").await.status(),
        202
    );
    let r = c
        .post("/v1/auth/resend", json!({"email": "eager@example.com"}))
        .await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_problem(r, 429, "rate_limited").await;
    // An address with no account: the same answers, first 202, then 429.
    let unknown = || {
        c.post(
            "/v1/auth/resend",
            json!({"email": "nobody-here@example.com"}),
        )
    };
    assert_eq!(unknown().await.status(), 202);
    assert_problem(unknown().await, 429, "rate_limited").await;
    // Other addresses are not held up.
    let r = c
        .post(
            "/v1/auth/resend",
            json!({"email": "someone-else@example.com"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(k.outbox_messages("eager@example.com").len(), 1);
    assert!(k.outbox_messages("nobody-here@example.com").is_empty());

    // Five an hour, whatever the interval.
    let k = started(
        kiln(&[])
            .env("KILN_API_CODE_RESEND_INTERVAL_SECS", 0)
            .env("KILN_API_CODES_PER_HOUR", 3),
    )
    .await;
    let c = Client::new(&k.url(""));
    assert_eq!(register(&c, "phone", "+4915112345679").await.status(), 202);
    for _ in 0..2 {
        let r = c
            .post("/v1/auth/resend", json!({"phone": "+4915112345679"}))
            .await;
        assert_eq!(r.status(), 202);
    }
    let r = c
        .post("/v1/auth/resend", json!({"phone": "+49 151 1234 5679"}))
        .await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 3000, "{retry_after}");
    assert_problem(r, 429, "rate_limited").await;
    // Each code replaced the one before; a replaced code still queued is
    // not sent (`code_not_live`), so one to three messages arrive.
    k.wait_outbox("+4915112345679", 1).await;
    assert!(k.outbox_messages("+4915112345679").len() <= 3);
}

/// Two `kiln serve` processes on `db` that share their limits through
/// Redis, under a key prefix of their own.
async fn two_serves_sharing_redis(db: &TestDatabase) -> (Kiln, Kiln) {
    let prefix = format!("kiln-test:{}:", uuid::Uuid::now_v7());
    let serve = || {
        kiln(&["serve"])
            .database(&db.url)
            .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:6379")
            .env("KILN_RATE_LIMITS_KEY_PREFIX", &prefix)
            .env("KILN_API_CODE_KEY", "ef".repeat(32))
    };
    (started(serve()).await, started(serve()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_the_limit_through_redis() {
    let db = TestDatabase::postgres().await;
    let (a, b) = two_serves_sharing_redis(&db).await;
    let (ca, cb) = (Client::new(&a.url("")), Client::new(&b.url("")));
    assert_eq!(
        register(&ca, "email", "shared@example.com").await.status(),
        202
    );
    let r = cb
        .post("/v1/auth/resend", json!({"email": "shared@example.com"}))
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, 429, "rate_limited").await;
    let r = cb
        .post("/v1/auth/resend", json!({"email": "other@example.com"}))
        .await;
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_wrong_password_across_two_serve_processes_is_refused_until_the_window_passes() {
    let db = TestDatabase::postgres().await;
    let (a, b) = two_serves_sharing_redis(&db).await;
    let (ca, cb) = (Client::new(&a.url("")), Client::new(&b.url("")));
    let login = |c: &Client, email: &str, password: &str| {
        let c = c.clone();
        let body = json!({"email": email, "password": password});
        async move { c.post("/v1/auth/login", body).await }
    };
    // An address with no account: the same count, so 429 tells nothing.
    for n in 0..5 {
        let c = if n % 2 == 0 { &ca } else { &cb };
        let r = login(c, "nobody@example.com", "wrong wrong wrong").await;
        assert_eq!(r.status(), 401, "attempt {n}");
    }
    let r = login(&cb, "nobody@example.com", "wrong wrong wrong").await;
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "Retry-After {wait}");
    assert_problem(r, 429, "rate_limited").await;
    let r = login(&ca, "nobody@example.com", "wrong wrong wrong").await;
    assert_problem(r, 429, "rate_limited").await;
    // Another address from the same IP still gets its own five.
    let r = login(&ca, "somebody@example.com", "wrong wrong wrong").await;
    assert_eq!(r.status(), 401);
}
