//! Buying credits through the real binary: the dev checkout pays by a
//! signed notification on the embedded default, and against a fake Paddle
//! the checkout sends only the price, kiln's references and the buyer's
//! email, while notifications are applied once and only when signed,
//! fresh and for the right account.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{Client, Kiln, assert_problem, kiln};
use kiln_providers::payments::signature::sign_paddle;
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn started(builder: common::KilnBuilder) -> Kiln {
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

async fn balance(client: &Client) -> (i64, Vec<Value>) {
    let page: Value = client
        .get("/v1/credits?limit=100")
        .await
        .json()
        .await
        .unwrap();
    (
        page["balance"].as_i64().unwrap(),
        page["entries"].as_array().unwrap().clone(),
    )
}

fn purchases(entries: &[Value]) -> Vec<&Value> {
    entries.iter().filter(|e| e["kind"] == "purchase").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_checkout_pays_once_on_the_embedded_default() {
    let k = started(kiln(&[])).await;
    let client = Client::signed_up(&k, "buyer@example.com").await;
    assert_eq!(balance(&client).await.0, 50);

    let packs: Value = client.get("/v1/credits/packs").await.json().await.unwrap();
    assert_eq!(
        packs["packs"][1],
        json!({"name": "small", "credits": 100, "amount": 500, "currency": "USD"})
    );
    let r = client
        .post("/v1/credits/checkout", json!({"pack": "small"}))
        .await;
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    let url = order["checkout_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&k.url("/v1/dev/checkout/")), "{url}");
    assert_eq!(order["credits"], 100);

    // The page a buyer opens: no script, a form that posts back.
    let browser = reqwest::Client::new();
    let page = browser.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("100 credits (5.00 USD)"), "{html}");
    assert!(html.contains("<form method=\"post\">"), "{html}");

    let paid = browser.post(&url).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    assert!(
        paid.text()
            .await
            .unwrap()
            .contains("100 credits were added")
    );
    let (sum, entries) = balance(&client).await;
    assert_eq!(sum, 150);
    let bought = purchases(&entries);
    assert_eq!(bought.len(), 1);
    assert_eq!(bought[0]["order_id"], order["order_id"]);
    assert_eq!(bought[0]["reason"], "purchase:small");

    // Paying again, or reloading the page, adds nothing.
    let again = browser.post(&url).send().await.unwrap();
    assert!(again.text().await.unwrap().contains("This order is paid"));
    assert_eq!(balance(&client).await.0, 150);

    // Unknown packs and orders.
    let r = client
        .post("/v1/credits/checkout", json!({"pack": "huge"}))
        .await;
    let problem = assert_problem(r, 422, "invalid_input").await;
    assert!(problem["detail"].as_str().unwrap().contains("large, small"));
    let missing = browser
        .get(k.url("/v1/dev/checkout/8d0f5f4e-9a52-4c57-9d59-1c3a1b1d2e3f"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let anonymous = Client::new(&k.url(""));
    let r = anonymous
        .post("/v1/credits/checkout", json!({"pack": "small"}))
        .await;
    assert_problem(r, 401, "unauthorized").await;
}

const WEBHOOK_SECRET: &str = "pdl_ntfset_01test_secret";

/// A fake Paddle: customers are created, transactions get a checkout URL.
async fn fake_paddle() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/customers"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"data": {"id": "ctm_01buyer"}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/transactions"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "data": {"id": "txn_01paid", "status": "ready",
                     "checkout": {"url": "https://pay.example.com/checkout?_ptxn=txn_01paid"}}
        })))
        .mount(&server)
        .await;
    server
}

fn completed(event_id: &str, order: &Value, account: &str) -> String {
    json!({
        "event_id": event_id,
        "event_type": "transaction.completed",
        "occurred_at": "2026-12-01T10:00:00Z",
        "notification_id": format!("ntf_{event_id}"),
        "data": {
            "id": "txn_01paid", "status": "completed", "currency_code": "EUR",
            "customer_id": "ctm_01buyer",
            "custom_data": {"kiln_order": order["order_id"], "kiln_account": account},
            "details": {"totals": {"total": "500", "grand_total": "500"}},
        },
    })
    .to_string()
}

async fn deliver(k: &Kiln, body: &str, signature: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(k.url("/v1/webhooks/payments"))
        .header("content-type", "application/json")
        .header("paddle-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paddle_checkout_and_notifications_on_postgres() {
    let db = TestDatabase::postgres().await;
    let paddle = fake_paddle().await;
    let k = started(
        kiln(&[])
            .database(&db.url)
            .env("KILN_PAYMENTS_PROVIDER", "paddle")
            .env("KILN_PAYMENTS_PADDLE_BASE_URL", paddle.uri())
            .env("KILN_PAYMENTS_PADDLE_API_KEY", "pdl_live_apikey_test")
            .env("KILN_PAYMENTS_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env(
                "KILN_PAYMENTS_PACKS",
                r#"{small={credits=100,amount=500,currency="EUR",price_id="pri_01small"}}"#,
            ),
    )
    .await;
    let client = Client::signed_up(&k, "payer@example.com").await;
    let r = client
        .post("/v1/credits/checkout", json!({"pack": "small"}))
        .await;
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    assert_eq!(
        order["checkout_url"],
        "https://pay.example.com/checkout?_ptxn=txn_01paid"
    );

    // What Paddle saw: the email (to make the customer), and then the
    // price and kiln's two references. Nothing else about the account.
    let requests = paddle.received_requests().await.unwrap();
    let lookups: Vec<String> = requests
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .map(|r| r.url.query().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(lookups, vec!["email=payer%40example.com".to_owned()]);
    let posted: Vec<(String, Value)> = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| {
            (
                r.url.path().to_owned(),
                serde_json::from_slice(&r.body).unwrap(),
            )
        })
        .collect();
    let custom_data = &posted[1].1["custom_data"];
    let account = custom_data["kiln_account"].as_str().unwrap().to_owned();
    assert_eq!(
        posted,
        vec![
            (
                "/customers".to_owned(),
                json!({"email": "payer@example.com"})
            ),
            (
                "/transactions".to_owned(),
                json!({
                    "items": [{"price_id": "pri_01small", "quantity": 1}],
                    "custom_data": {"kiln_order": order["order_id"], "kiln_account": account},
                    "customer_id": "ctm_01buyer",
                })
            ),
        ]
    );
    for r in &requests {
        assert_eq!(
            r.headers["authorization"].to_str().unwrap(),
            "Bearer pdl_live_apikey_test"
        );
    }
    assert_eq!(balance(&client).await.0, 50);

    // A wrong signature, a stale one and none at all: refused, nothing applied.
    let body = completed("evt_01", &order, &account);
    let wrong = sign_paddle(b"another secret", now(), body.as_bytes());
    assert_problem(deliver(&k, &body, &wrong).await, 400, "invalid_signature").await;
    let stale = sign_paddle(WEBHOOK_SECRET.as_bytes(), now() - 60, body.as_bytes());
    assert_problem(deliver(&k, &body, &stale).await, 400, "stale_signature").await;
    let r = reqwest::Client::new()
        .post(k.url("/v1/webhooks/payments"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, "invalid_signature").await;
    // A valid signature over another body.
    let tampered = body.replace("\"500\"", "\"1\"");
    let over_other = sign_paddle(WEBHOOK_SECRET.as_bytes(), now(), body.as_bytes());
    assert_problem(
        deliver(&k, &tampered, &over_other).await,
        400,
        "invalid_signature",
    )
    .await;
    assert_eq!(balance(&client).await.0, 50);

    // Delivered three times: granted once.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let signed = sign_paddle(WEBHOOK_SECRET.as_bytes(), now(), body.as_bytes());
        let r = deliver(&k, &body, &signed).await;
        assert_eq!(r.status(), 200);
        let ack: Value = r.json().await.unwrap();
        outcomes.push(ack["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(outcomes, ["granted", "duplicate", "duplicate"]);
    // A replayed event id with another (signed) body changes nothing.
    let replay = completed("evt_01", &order, &account).replace("EUR", "USD");
    let signed = sign_paddle(WEBHOOK_SECRET.as_bytes(), now(), replay.as_bytes());
    let ack: Value = deliver(&k, &replay, &signed).await.json().await.unwrap();
    assert_eq!(ack["outcome"], "duplicate");
    // Another event for the same order: already paid.
    let second = completed("evt_02", &order, &account);
    let signed = sign_paddle(WEBHOOK_SECRET.as_bytes(), now(), second.as_bytes());
    let ack: Value = deliver(&k, &second, &signed).await.json().await.unwrap();
    assert_eq!(ack["outcome"], "already_paid");

    let (sum, entries) = balance(&client).await;
    assert_eq!(sum, 150);
    assert_eq!(purchases(&entries).len(), 1);

    // The order as recorded, apart from the person.
    let store = kiln_store::connect(&kiln_store::ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: std::time::Duration::ZERO,
        pii: kiln_store::testing::test_pii(),
    })
    .await
    .unwrap();
    let recorded = store
        .order(order["order_id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.transaction_id.as_deref(), Some("txn_01paid"));
    assert_eq!(
        (recorded.amount, recorded.currency.as_deref()),
        (Some(500), Some("EUR"))
    );
    assert_eq!(
        recorded.paid_at.unwrap().to_rfc3339(),
        "2026-12-01T10:00:00+00:00"
    );
    // The dev checkout pages do not exist with a real merchant.
    let page = reqwest::get(k.url(&format!(
        "/v1/dev/checkout/{}",
        order["order_id"].as_str().unwrap()
    )))
    .await
    .unwrap();
    assert_eq!(page.status(), 404);
}
