//! The public API under bad input, missing or wrong credentials, other
//! users' resources, tampered links and garbage: every refusal is a 4xx
//! `application/problem+json` with a stable `code`, never a 5xx, and the
//! process stays healthy. Many requests per test, each test on an API of
//! its own: in process (`kiln_api::testing`, the real router over a SQLite
//! scratch store, on a port of its own) when only the API is under test; a
//! `kiln` process when the test needs workers to finish jobs or reads the
//! process's log.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use common::{Client, Codes, Kiln, KilnBuilder, assert_problem, kiln};
use kiln_api::testing::{TestApi, TestServer};
use kiln_store::testing::TestDatabase;
use reqwest::{
    Method,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const LIGHTHOUSE: &str = "a lighthouse at dusk";

// ---------------------------------------------------------------- helpers

/// Something serving the public API over HTTP: a `kiln` process or an
/// in-process server.
trait Served {
    fn addr(&self) -> SocketAddr;
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

impl Served for Kiln {
    fn addr(&self) -> SocketAddr {
        self.http
    }
}

/// The API in this process, on a SQLite scratch store, served on a port
/// of its own. No workers: jobs stay queued.
struct InProcess {
    server: TestServer,
    _api: TestApi,
}

impl Served for InProcess {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// In process there is no worker and no outbox: the code is read with the
/// test kit's hook, derived as the worker would (`TestApi::sent_code`).
impl Codes for InProcess {
    fn base(&self) -> String {
        self.url("")
    }

    async fn latest_code(&self, address: &str) -> String {
        self._api
            .sent_code(address)
            .await
            .unwrap_or_else(|| panic!("no code was issued for {address}"))
    }
}

async fn start() -> InProcess {
    let api = TestApi::sqlite().await.expect("a scratch store");
    InProcess {
        server: api.serve().await,
        _api: api,
    }
}

/// [`start`], but codes may go to one address as often as a test asks.
async fn start_unthrottled() -> InProcess {
    let db = TestDatabase::sqlite();
    let store = db.store().await.expect("a scratch store");
    let api = TestApi::with_config(
        store,
        kiln_api::ApiConfig {
            code_resend_interval_secs: 0,
            codes_per_hour: 1000,
            ..kiln_api::testing::test_config()
        },
    )
    .keeping(db);
    InProcess {
        server: api.serve().await,
        _api: api,
    }
}

/// A `kiln` process (API, workers, scheduler) on its defaults.
async fn start_binary() -> Kiln {
    start_with(kiln(&[])).await
}

async fn start_with(builder: KilnBuilder) -> Kiln {
    let k = builder.spawn();
    k.wait_http(k.http, "/readyz").await;
    k
}

async fn signed_up(k: &(impl Served + Codes), who: &str) -> Client {
    Client::signed_up(k, &format!("{who}@example.com")).await
}

fn anonymous(k: &impl Served) -> Client {
    Client::new(&k.url(""))
}

/// A client that opens a connection per request. The server may answer
/// without reading a request's body (401 before the body, 415, 413) and then
/// hang up; a pooled connection reused at that moment fails in the client,
/// which says nothing about the API. Requests whose body may go unread use
/// this.
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A POST with this exact body and content type (none when `None`), as
/// `c`'s user, on a connection of its own.
async fn post_raw(
    c: &Client,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = unpooled().post(format!("{}{path}", c.base)).body(body);
    if let Some(token) = &c.token {
        req = req.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    req.send().await.expect("POST")
}

async fn post_json_text(c: &Client, path: &str, body: &str) -> reqwest::Response {
    post_raw(c, path, Some("application/json"), body.to_owned()).await
}

/// `assert_problem`, but a wrong status or content type names the case and
/// shows what came back instead.
async fn expect(r: reqwest::Response, status: u16, code: &str, case: &str) -> Value {
    let got = r.status().as_u16();
    let content_type = content_type(&r);
    if got != status || content_type != "application/problem+json" {
        let body = r.text().await.unwrap_or_default();
        panic!("{case}: expected {status} {code} problem+json, got {got} ({content_type}): {body}");
    }
    assert_problem(r, status, code).await
}

/// A success with this status; shows the body otherwise.
async fn expect_ok(r: reqwest::Response, status: u16, case: &str) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "{case}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Enqueues a generation and returns its job id.
async fn enqueue(c: &Client, body: Value) -> String {
    let job = expect_ok(c.post("/v1/generations", body).await, 202, "enqueue").await;
    job["id"].as_str().unwrap().to_owned()
}

/// Enqueues, waits for success, returns the finished job.
async fn generated(c: &Client, body: Value) -> Value {
    let id = enqueue(c, body).await;
    let job = c.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

// ------------------------------------------------- 1. bad input, by class

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "malformed").await;
    // Per endpoint: its first field, the rest of a valid body, and an
    // optional field to put bad numbers in. The breakage comes before
    // anything the struct could refuse on its merits (422).
    let endpoints = [
        ("/v1/generations", "prompt", r#","size":"256x256""#, "n"),
        (
            "/v1/auth/register",
            "email",
            r#","password":"correct horse battery","birth_date":"1990-01-01""#,
            "referral_code",
        ),
        (
            "/v1/auth/login",
            "email",
            r#","password":"correct horse battery""#,
            "phone",
        ),
    ];
    for (path, first, rest, extra) in endpoints {
        let valid = format!(r#"{{"{first}":"malformed@example.com"{rest}}}"#);
        let bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"\x00\x00\x00\x00".to_vec(),
            valid.as_bytes()[..valid.len() - 1].to_vec(),
            format!(r#"{{"{first}":"x"{rest},}}"#).into_bytes(),
            format!(r#"{{{first}:"x"{rest}}}"#).into_bytes(),
            format!("{{'{first}':'x'}}").into_bytes(),
            format!("{valid} trailing").into_bytes(),
            format!("{valid}{valid}").into_bytes(),
            format!(r#"{{"{first}":"a\xb"{rest}}}"#).into_bytes(),
            format!("{{\"{first}\":\"a\u{1}b\"{rest}}}").into_bytes(),
            [
                format!("{{\"{first}\":\"").as_bytes(),
                &b"\xff\xfe"[..],
                format!("\"{rest}}}").as_bytes(),
            ]
            .concat(),
            format!(
                r#"{valid_open},"{extra}":NaN}}"#,
                valid_open = &valid[..valid.len() - 1]
            )
            .into_bytes(),
            format!(
                r#"{valid_open},"{extra}":01}}"#,
                valid_open = &valid[..valid.len() - 1]
            )
            .into_bytes(),
        ];
        // The unbroken body parses (so the others fail for their breakage).
        let r = post_json_text(&c, path, &valid).await;
        assert!(
            ![400, 413, 415, 422].contains(&r.status().as_u16()),
            "{path} {valid}: {}",
            r.status()
        );
        for body in bodies {
            let case = format!("{path} {:?}", String::from_utf8_lossy(&body));
            let r = post_raw(&c, path, Some("application/json"), body).await;
            expect(r, 400, "invalid_input", &case).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "types").await;
    let cases = [
        ("/v1/generations", json!({"prompt": 5})),
        ("/v1/generations", json!({"prompt": true})),
        ("/v1/generations", json!({"prompt": ["a lighthouse"]})),
        (
            "/v1/generations",
            json!({"prompt": {"text": "a lighthouse"}}),
        ),
        ("/v1/generations", json!({"prompt": null})),
        ("/v1/generations", json!({"prompt": LIGHTHOUSE, "model": 1})),
        (
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "size": 256}),
        ),
        (
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "size": [256, 256]}),
        ),
        ("/v1/generations", json!({"prompt": LIGHTHOUSE, "n": "1"})),
        ("/v1/generations", json!({"prompt": LIGHTHOUSE, "n": 1.5})),
        ("/v1/generations", json!({"prompt": LIGHTHOUSE, "n": true})),
        ("/v1/generations", json!(null)),
        ("/v1/generations", json!(42)),
        ("/v1/generations", json!("a lighthouse")),
        ("/v1/generations", json!([])),
        (
            "/v1/auth/register",
            json!({"email": 5, "password": PASSWORD, "birth_date": "1990-01-01"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "t@example.com", "password": 12345678, "birth_date": "1990-01-01"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "t@example.com", "password": PASSWORD, "birth_date": 19900101}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "t@example.com", "password": PASSWORD, "birth_date": "1990-01-01", "referral_code": 7}),
        ),
        ("/v1/auth/register", json!(true)),
        (
            "/v1/auth/login",
            json!({"email": ["t@example.com"], "password": PASSWORD}),
        ),
        (
            "/v1/auth/login",
            json!({"email": "t@example.com", "password": null}),
        ),
        ("/v1/auth/login", json!("t@example.com")),
    ];
    for (path, body) in cases {
        let r = c.post(path, body.clone()).await;
        expect(r, 422, "invalid_input", &format!("{path} {body}")).await;
    }
}

/// serde's derive also reads a struct from a positional array; the API
/// takes objects only (its schema says so), so an array is a wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_arrays_are_not_request_bodies() {
    let k = start().await;
    let c = signed_up(&k, "arrays").await;
    let cases = [
        ("/v1/generations", json!([LIGHTHOUSE, null, "256x256", 1])),
        (
            "/v1/auth/register",
            json!(["arrays2@example.com", null, PASSWORD, "1990-01-01", null]),
        ),
        (
            "/v1/auth/login",
            json!(["arrays@example.com", null, PASSWORD]),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, body) in cases {
        let r = c.post(path, body.clone()).await;
        let status = r.status().as_u16();
        if status != 422 {
            let text = r.text().await.unwrap_or_default();
            wrong.push(format!("{path} {body}: {status} {text}"));
        } else {
            expect(r, 422, "invalid_input", path).await;
        }
    }
    assert!(
        wrong.is_empty(),
        "arrays taken as objects:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "unknown").await;
    let cases = [
        (
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "colour": "red"}),
        ),
        (
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "Prompt": LIGHTHOUSE}),
        ),
        ("/v1/generations", json!({"prompt": LIGHTHOUSE, "": 1})),
        (
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "size": "256x256", "owner": "someone-else"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "u2@example.com", "password": PASSWORD, "birth_date": "1990-01-01", "name": "U"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "u3@example.com", "password": PASSWORD, "birth_date": "1990-01-01", "is_operator": true}),
        ),
        (
            "/v1/auth/login",
            json!({"email": "unknown@example.com", "password": PASSWORD, "remember_me": true}),
        ),
    ];
    for (path, body) in cases {
        let r = c.post(path, body.clone()).await;
        expect(r, 422, "invalid_input", &format!("{path} {body}")).await;
    }
    // Nothing was registered by the refused requests.
    for who in ["u2", "u3"] {
        let r = c
            .post(
                "/v1/auth/login",
                json!({"email": format!("{who}@example.com"), "password": PASSWORD}),
            )
            .await;
        expect(r, 401, "unauthorized", who).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_fields_are_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "missing").await;
    let cases = [
        ("/v1/generations", json!({})),
        (
            "/v1/generations",
            json!({"size": "256x256", "n": 1, "model": "dev-image-1"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "m@example.com", "birth_date": "1990-01-01"}),
        ),
        (
            "/v1/auth/register",
            json!({"email": "m@example.com", "password": PASSWORD}),
        ),
        ("/v1/auth/register", json!({})),
        ("/v1/auth/login", json!({"email": "missing@example.com"})),
        ("/v1/auth/login", json!({})),
    ];
    for (path, body) in cases {
        let r = c.post(path, body.clone()).await;
        expect(r, 422, "invalid_input", &format!("{path} {body}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blank_and_oversized_prompts_are_422() {
    let k = start().await;
    let c = signed_up(&k, "prompts").await;
    let too_long_ascii = "a".repeat(4001);
    let too_long_wide = "é".repeat(4001);
    let blanks = ["", " ", "   \t\n  ", "\u{3000}\u{2003}", "\r\n"];
    for prompt in blanks {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": prompt, "size": "256x256"}),
            )
            .await;
        let p = expect(r, 422, "invalid_input", &format!("prompt {prompt:?}")).await;
        assert!(p["detail"].as_str().unwrap().contains("prompt"), "{p}");
    }
    for prompt in [&too_long_ascii, &too_long_wide] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": prompt, "size": "256x256"}),
            )
            .await;
        let p = expect(r, 422, "invalid_input", "prompt of 4001 characters").await;
        assert!(p["detail"].as_str().unwrap().contains("4000"), "{p}");
    }
    // The limit counts characters, not bytes, after trimming.
    for prompt in [
        "a".repeat(4000),
        "é".repeat(4000),
        format!("  {}  ", "b".repeat(4000)),
    ] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": prompt, "size": "256x256"}),
            )
            .await;
        expect_ok(r, 202, "prompt of 4000 characters").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_422_and_enqueue_nothing() {
    let k = start().await;
    let c = signed_up(&k, "batches").await;
    let item = json!({"prompt": LIGHTHOUSE, "size": "256x256"});
    let cases = [
        (json!({"items": []}), "items must hold 1 to 100"),
        (
            json!({"items": vec![item.clone(); 101]}),
            "items must hold 1 to 100",
        ),
        (
            json!({"items": [item.clone(), {"prompt": "  "}]}),
            "items[1]: prompt must not be empty",
        ),
        (
            json!({"items": [item.clone(), item.clone(), {"prompt": "ok", "size": "3x3"}]}),
            "items[2]: size must be one of",
        ),
        (
            json!({"items": [{"prompt": "ok", "colour": "red"}]}),
            "colour",
        ),
    ];
    for (body, detail) in cases {
        let p = expect(
            c.post("/v1/generations/batch", body.clone()).await,
            422,
            "invalid_input",
            &format!("batch {body}"),
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap().contains(detail),
            "{detail}: {p}"
        );
    }
    for body in [json!({}), json!({"items": item}), json!([item])] {
        let r = c.post("/v1/generations/batch", body.clone()).await;
        assert!(r.status().is_client_error(), "batch {body}: {}", r.status());
    }
    // Nothing of any refused batch went in.
    let page = expect_ok(c.get("/v1/jobs").await, 200, "list").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");
    // A batch reserves its whole price at once: with the sign-up grant's
    // 50 credits, 100 images are refused whole and nothing goes in.
    let hundred = json!({"items": vec![item; 100]});
    expect(
        c.post("/v1/generations/batch", hundred.clone()).await,
        402,
        "insufficient_credits",
        "batch beyond the balance",
    )
    .await;
    let page = expect_ok(c.get("/v1/jobs").await, 200, "list").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");
    let credits = expect_ok(c.get("/v1/credits").await, 200, "credits").await;
    assert_eq!(
        (&credits["balance"], &credits["reserved"]),
        (&json!(50), &json!(0))
    );

    // The largest batch is taken whole once it is paid for.
    let store = k._api.store();
    let user = store
        .login_record(&kiln_store::accounts::Identifier::Email(
            "batches@example.com".into(),
        ))
        .await
        .unwrap()
        .unwrap()
        .user_id;
    assert!(store.grant_credits(user, 50, "test").await.unwrap());
    let r = c.post("/v1/generations/batch", hundred).await;
    let batch = expect_ok(r, 202, "batch of 100").await;
    assert_eq!(batch["jobs"].as_array().unwrap().len(), 100);
    let credits = expect_ok(c.get("/v1/credits").await, 200, "credits").await;
    assert_eq!(
        (&credits["balance"], &credits["reserved"]),
        (&json!(0), &json!(100))
    );
}

/// One HTTP/1.1 request over a plain socket, reading while writing: the
/// server may answer (and close) before it has read a large body, and an
/// HTTP client library then reports the broken write instead of the answer.
/// `None` when the connection was reset before any answer could be read.
async fn raw_post(
    k: &impl Served,
    path: &str,
    token: &str,
    body: &[u8],
) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(k.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        k.addr(),
        body.len()
    );
    let request = [head.as_bytes(), body].concat();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    drop(writer.await);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413_payload_too_large() {
    let k = start().await;
    let c = signed_up(&k, "large").await;
    const LIMIT: usize = 64 * 1024;
    // `{"prompt":"aaa…"}` of exactly `len` bytes.
    let body_of = |len: usize| format!("{{\"prompt\":\"{}\"}}", "a".repeat(len - 13));
    assert_eq!(body_of(LIMIT).len(), LIMIT);
    // Just over the limit, and twice it: small enough that the whole
    // request is written before the answer comes.
    for path in ["/v1/generations", "/v1/auth/register", "/v1/auth/login"] {
        for len in [LIMIT + 1, 2 * LIMIT] {
            let r = post_json_text(&c, path, &body_of(len)).await;
            expect(r, 413, "payload_too_large", &format!("{path} {len} bytes")).await;
        }
    }
    // A megabyte: whatever answer arrives before the server hangs up is a
    // 413 problem; nothing else, and the server keeps serving.
    let token = c.token.clone().unwrap();
    let mut answered = 0;
    for path in ["/v1/generations", "/v1/auth/register"] {
        for _ in 0..3 {
            if let Some((status, ct, body)) =
                raw_post(&k, path, &token, body_of(1024 * 1024).as_bytes()).await
            {
                answered += 1;
                assert_eq!(status, 413, "{path} 1 MiB: {body}");
                assert_eq!(ct, "application/problem+json", "{path} 1 MiB: {body}");
                assert!(body.contains("payload_too_large"), "{path} 1 MiB: {body}");
            }
        }
    }
    eprintln!("1 MiB bodies: {answered} of 6 answers read before the connection closed");
    // At the limit the body is read, and the prompt refused on its merits.
    let r = post_json_text(&c, "/v1/generations", &body_of(LIMIT)).await;
    expect(r, 422, "invalid_input", "a 64 KiB body").await;
    // Still serving.
    expect_ok(c.get("/v1/jobs").await, 200, "after large bodies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415_unsupported_media_type() {
    let k = start().await;
    let c = signed_up(&k, "media").await;
    let generation = json!({"prompt": LIGHTHOUSE, "size": "256x256"}).to_string();
    let register =
        json!({"email": "media2@example.com", "password": PASSWORD, "birth_date": "1990-01-01"})
            .to_string();
    let login = json!({"email": "media@example.com", "password": PASSWORD}).to_string();
    for (path, body) in [
        ("/v1/generations", &generation),
        ("/v1/auth/register", &register),
        ("/v1/auth/login", &login),
    ] {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("json"),
            Some(""),
        ] {
            let r = post_raw(&c, path, ct, body.clone()).await;
            expect(
                r,
                415,
                "unsupported_media_type",
                &format!("{path} content-type {ct:?}"),
            )
            .await;
        }
    }
    // With the right type the same bodies are taken.
    let r = post_raw(
        &c,
        "/v1/generations",
        Some("application/json; charset=utf-8"),
        generation,
    )
    .await;
    expect_ok(r, 202, "application/json; charset=utf-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sizes_are_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "sizes").await;
    for size in [
        "1024",
        "0x0",
        "99999x99999",
        "abc",
        "300x300",
        "2048x2048",
        "1536x1536",
        "256X256",
        " 256x256",
        "256x256x256",
        "-256x256",
        "256x",
        "x256",
        "",
        "256×256",
    ] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": LIGHTHOUSE, "size": size}),
            )
            .await;
        let p = expect(r, 422, "invalid_input", &format!("size {size:?}")).await;
        assert!(p["detail"].as_str().unwrap().contains("size"), "{p}");
    }
    for size in ["256x256", "512x512"] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": LIGHTHOUSE, "size": size}),
            )
            .await;
        expect_ok(r, 202, size).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_n_is_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "counts").await;
    // Out of range (checked by the handler) and not a u32 at all (refused
    // by the JSON extractor as a data error): both 422.
    for n in [
        json!(0),
        json!(5),
        json!(100),
        json!(-1),
        json!("two"),
        json!(4_294_967_296_u64),
        json!(2.0),
        json!([1]),
    ] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": LIGHTHOUSE, "size": "256x256", "n": n}),
            )
            .await;
        expect(r, 422, "invalid_input", &format!("n = {n}")).await;
    }
    for n in [1, 4] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": LIGHTHOUSE, "size": "256x256", "n": n}),
            )
            .await;
        expect_ok(r, 202, &format!("n = {n}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_422_invalid_input() {
    let k = start().await;
    let c = signed_up(&k, "models").await;
    for model in ["dall-e-3", "", "DEV-IMAGE-1", " dev-image-1", "dev-image-2"] {
        let r = c
            .post(
                "/v1/generations",
                json!({"prompt": LIGHTHOUSE, "size": "256x256", "model": model}),
            )
            .await;
        let p = expect(r, 422, "invalid_input", &format!("model {model:?}")).await;
        assert!(p["detail"].as_str().unwrap().contains("model"), "{p}");
    }
    let r = c
        .post(
            "/v1/generations",
            json!({"prompt": LIGHTHOUSE, "size": "256x256", "model": "dev-image-1"}),
        )
        .await;
    expect_ok(r, 202, "the default model by name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_paths_are_404_not_found() {
    let k = start().await;
    let c = signed_up(&k, "ids").await;
    let random = uuid::Uuid::now_v7();
    let v4 = uuid::Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef);
    let gets = [
        "/v1/jobs/not-a-uuid".to_owned(),
        "/v1/jobs/123".to_owned(),
        format!("/v1/jobs/{random}"),
        format!("/v1/jobs/{v4}"),
        format!("/v1/jobs/{}", random.simple()),
        "/v1/jobs/%00".to_owned(),
        "/v1/jobs/'%20OR%201=1--".to_owned(),
        "/v1/images/123".to_owned(),
        "/v1/images/not-a-uuid".to_owned(),
        format!("/v1/images/{random}"),
    ];
    for path in &gets {
        let p = expect(c.get(path).await, 404, "not_found", path).await;
        let what = if path.starts_with("/v1/jobs") {
            "job"
        } else {
            "image"
        };
        assert_eq!(p["detail"], format!("no such {what}"), "{path}");
    }
    for path in [
        "/v1/jobs/not-a-uuid/cancel".to_owned(),
        format!("/v1/jobs/{random}/cancel"),
    ] {
        let r = c.request(Method::POST, &path).send().await.unwrap();
        expect(r, 404, "not_found", &path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_problems() {
    let k = start().await;
    let c = signed_up(&k, "routing").await;
    for path in ["/v1/nope", "/v2/jobs", "/v1/jobs/a/b/c", "/"] {
        let p = expect(c.get(path).await, 404, "not_found", path).await;
        assert_eq!(p["detail"], "no such route", "{path}");
    }
}

/// `parse_id` says it: any id that does not parse names nothing, a 404.
/// That includes path segments that percent-decode to invalid UTF-8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_utf8_are_404_problems() {
    let k = start().await;
    let c = signed_up(&k, "utf8").await;
    for (method, path) in [
        (Method::GET, "/v1/jobs/%FF"),
        (Method::GET, "/v1/images/%C3%28"),
        (Method::POST, "/v1/jobs/%FF/cancel"),
    ] {
        let r = c.request(method.clone(), path).send().await.unwrap();
        expect(r, 404, "not_found", &format!("{method} {path}")).await;
    }
}

/// A method the route lacks is an error like any other: 405, and
/// problem+json like every error (API.md), with the `Allow` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_405_problems() {
    let k = start().await;
    let c = signed_up(&k, "methods").await;
    for (method, path, allow) in [
        (Method::GET, "/v1/generations", "POST"),
        (Method::DELETE, "/v1/jobs", "GET"),
        (Method::GET, "/v1/auth/login", "POST"),
        (Method::PUT, "/v1/auth/register", "POST"),
    ] {
        let r = c.request(method.clone(), path).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = content_type(&r);
        let allowed = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(
            allowed.contains(allow),
            "{method} {path}: Allow {allowed:?}"
        );
        assert_eq!(
            ct, "application/problem+json",
            "{method} {path}: 405 answered as {ct:?} with body {body:?}"
        );
        let p: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(p["status"], 405, "{p}");
        assert!(p["code"].is_string() && p["detail"].is_string(), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_are_400_or_422() {
    // A finished generation needs workers: a `kiln` process.
    let k = start_binary().await;
    let c = signed_up(&k, "queries").await;
    let job = generated(&c, json!({"prompt": LIGHTHOUSE, "size": "256x256"})).await;
    let id = job["id"].as_str().unwrap();
    // Values of the right type the handler refuses: 422.
    for q in [
        "limit=0",
        "limit=101",
        "state=nope",
        "state=SUCCEEDED",
        "state=",
        "cursor=garbage",
        "cursor=",
        "cursor=123",
    ] {
        let path = format!("/v1/jobs?{q}");
        expect(c.get(&path).await, 422, "invalid_input", &path).await;
    }
    // Query strings that do not deserialize at all: 400.
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=4294967296",
        "limit=",
        "limit=1&limit=2",
        "colour=red",
        "state=running&owner=someone",
    ] {
        let path = format!("/v1/jobs?{q}");
        expect(c.get(&path).await, 400, "invalid_input", &path).await;
    }
    for q in [
        "wait=abc",
        "wait=-1",
        "wait=1.5",
        "wait=",
        "timeout=5",
        "wait=1&x=2",
    ] {
        let path = format!("/v1/jobs/{id}?{q}");
        expect(c.get(&path).await, 400, "invalid_input", &path).await;
    }
    // The good ones, for contrast.
    for path in [
        "/v1/jobs?limit=1".to_owned(),
        "/v1/jobs?limit=100".to_owned(),
        "/v1/jobs?state=succeeded&kind=generate_image".to_owned(),
        format!("/v1/jobs?cursor={id}"),
        format!("/v1/jobs/{id}?wait=0"),
        // A finished job answers at once however long the wait asked for.
        format!("/v1/jobs/{id}?wait=99999"),
    ] {
        expect_ok(c.get(&path).await, 200, &path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_idempotency_keys_are_400() {
    let k = start().await;
    let c = signed_up(&k, "idem").await;
    let body = json!({"prompt": LIGHTHOUSE, "size": "256x256"});
    let long = "k".repeat(256);
    let bad: Vec<(&str, HeaderValue)> = vec![
        ("empty", HeaderValue::from_static("")),
        ("blank", HeaderValue::from_static("   ")),
        ("256 characters", HeaderValue::from_str(&long).unwrap()),
        (
            "not visible ASCII",
            HeaderValue::from_bytes(b"key-\xe9\xff").unwrap(),
        ),
    ];
    for (case, value) in bad {
        let r = c
            .request(Method::POST, "/v1/generations")
            .header("Idempotency-Key", value)
            .json(&body)
            .send()
            .await
            .unwrap();
        let p = expect(r, 400, "invalid_input", case).await;
        assert!(
            p["detail"].as_str().unwrap().contains("Idempotency-Key"),
            "{p}"
        );
    }
    // 255 characters are fine; the same key and body give the same job,
    // another body 409.
    let key = "k".repeat(255);
    let send = |body: Value| {
        c.request(Method::POST, "/v1/generations")
            .header("Idempotency-Key", key.as_str())
            .json(&body)
            .send()
    };
    let first = expect_ok(send(body.clone()).await.unwrap(), 202, "first").await;
    let again = expect_ok(send(body.clone()).await.unwrap(), 200, "again").await;
    assert_eq!(first["id"], again["id"]);
    let other = json!({"prompt": "a lighthouse at dawn", "size": "256x256"});
    expect(send(other).await.unwrap(), 409, "conflict", "other body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_input_is_checked() {
    let k = start_unthrottled().await;
    let c = anonymous(&k);
    let reg = |fields: Value| {
        let mut body = json!({"password": PASSWORD, "birth_date": "1990-01-01"});
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let today = chrono::Utc::now().date_naive();
    let eighteen_today = today
        .checked_sub_months(chrono::Months::new(18 * 12))
        .unwrap();
    let seventeen = eighteen_today + chrono::Days::new(1);
    let cases = [
        ("invalid email: no @", reg(json!({"email": "nope"}))),
        ("invalid email: no dot", reg(json!({"email": "a@b"}))),
        (
            "invalid email: no local part",
            reg(json!({"email": "@example.com"})),
        ),
        ("invalid email: dot domain", reg(json!({"email": "a@.com"}))),
        (
            "invalid email: space",
            reg(json!({"email": "a b@example.com"})),
        ),
        ("invalid email: empty", reg(json!({"email": ""}))),
        (
            "invalid email: too long",
            reg(json!({"email": format!("{}@example.com", "a".repeat(250))})),
        ),
        ("invalid phone: short", reg(json!({"phone": "+12345"}))),
        (
            "invalid phone: no plus",
            reg(json!({"phone": "4915112345678"})),
        ),
        (
            "invalid phone: letters",
            reg(json!({"phone": "+49151abcdefg"})),
        ),
        (
            "invalid phone: too long",
            reg(json!({"phone": "+1234567890123456"})),
        ),
        ("invalid phone: empty", reg(json!({"phone": ""}))),
        (
            "both email and phone",
            reg(json!({"email": "both@example.com", "phone": "+4915112345678"})),
        ),
        ("neither email nor phone", reg(json!({}))),
        ("both null", reg(json!({"email": null, "phone": null}))),
        (
            "7-byte password",
            reg(json!({"email": "short@example.com", "password": "1234567"})),
        ),
        (
            "empty password",
            reg(json!({"email": "short@example.com", "password": ""})),
        ),
        (
            "73-byte password",
            reg(json!({"email": "long@example.com", "password": "p".repeat(73)})),
        ),
        (
            "74-byte password of 37 characters",
            reg(json!({"email": "long@example.com", "password": "ä".repeat(37)})),
        ),
        (
            "birth_date 01/02/1990",
            reg(json!({"email": "date@example.com", "birth_date": "01/02/1990"})),
        ),
        (
            "birth_date 1990-13-01",
            reg(json!({"email": "date@example.com", "birth_date": "1990-13-01"})),
        ),
        (
            "birth_date 1990-02-30",
            reg(json!({"email": "date@example.com", "birth_date": "1990-02-30"})),
        ),
        (
            "birth_date with time",
            reg(json!({"email": "date@example.com", "birth_date": "1990-01-01T00:00:00Z"})),
        ),
        (
            "birth_date empty",
            reg(json!({"email": "date@example.com", "birth_date": ""})),
        ),
        (
            "birth_date in the future",
            reg(
                json!({"email": "future@example.com", "birth_date": (today + chrono::Days::new(1)).to_string()}),
            ),
        ),
        (
            "birth_date far in the future",
            reg(json!({"email": "future@example.com", "birth_date": "2999-01-01"})),
        ),
        (
            "unknown referral code",
            reg(json!({"email": "referred@example.com", "referral_code": "NOSUCHCODE"})),
        ),
    ];
    for (case, body) in cases {
        let r = c.post("/v1/auth/register", body.clone()).await;
        expect(r, 422, "invalid_input", &format!("{case}: {body}")).await;
    }
    for (case, birth) in [
        ("17 and a day short of 18", seventeen.to_string()),
        ("born today", today.to_string()),
    ] {
        let r = c
            .post(
                "/v1/auth/register",
                reg(json!({"email": "young@example.com", "birth_date": birth})),
            )
            .await;
        expect(r, 422, "underage", case).await;
    }
    // Look-alike and hostile addresses, impossible dates, weak passwords.
    for (case, body, code) in [
        (
            "zero-width space",
            reg(json!({"email": "alice\u{200b}@example.com"})),
            "invalid_input",
        ),
        (
            "right-to-left override",
            reg(json!({"email": "\u{202e}alice@example.com"})),
            "invalid_input",
        ),
        (
            "markup in the local part",
            reg(json!({"email": "<script>alert(1)</script>@example.com"})),
            "invalid_input",
        ),
        (
            "born 0000-01-01",
            reg(json!({"email": "old@example.com", "birth_date": "0000-01-01"})),
            "invalid_input",
        ),
        (
            "born 1800-01-01",
            reg(json!({"email": "old@example.com", "birth_date": "1800-01-01"})),
            "invalid_input",
        ),
        (
            "password 'password'",
            reg(json!({"email": "weak@example.com", "password": "password"})),
            "weak_password",
        ),
        (
            "password 12345678",
            reg(json!({"email": "weak@example.com", "password": "12345678"})),
            "weak_password",
        ),
        (
            "eight spaces",
            reg(json!({"email": "weak@example.com", "password": "        "})),
            "weak_password",
        ),
        (
            "the address as password",
            reg(json!({"email": "weak.person@example.com", "password": "weak.person@example.com"})),
            "weak_password",
        ),
        (
            "the address as password, in capitals",
            reg(
                json!({"email": "weak.person@example.com", "password": "WEAK.PERSON@EXAMPLE.COM1"}),
            ),
            "weak_password",
        ),
    ] {
        let r = c.post("/v1/auth/register", body.clone()).await;
        let problem = expect(r, 422, code, &format!("{case}: {body}")).await;
        assert!(
            !problem["detail"].as_str().unwrap().contains("alice"),
            "the refusal does not echo the address: {problem}"
        );
    }
    // 18 today is old enough; the referral code comes with verification
    // and works in any case.
    let sent = expect_ok(
        c.post(
            "/v1/auth/register",
            reg(json!({"email": "adult@example.com", "birth_date": eighteen_today.to_string()})),
        )
        .await,
        202,
        "18 today",
    )
    .await;
    assert_eq!(sent, json!({"status": "verification_sent"}));
    let verified = expect_ok(
        c.post(
            "/v1/auth/verify",
            json!({"email": "adult@example.com", "code": k.latest_code("adult@example.com").await}),
        )
        .await,
        200,
        "verify",
    )
    .await;
    let code = verified["referral_code"].as_str().unwrap().to_lowercase();
    expect_ok(
        c.post(
            "/v1/auth/register",
            reg(json!({"email": "friend@example.com", "referral_code": format!(" {code} ")})),
        )
        .await,
        202,
        "known referral code",
    )
    .await;
    expect_ok(
        c.post(
            "/v1/auth/register",
            reg(json!({"phone": "+49 151 1234-5678"})),
        )
        .await,
        202,
        "phone",
    )
    .await;
    // The same email (however spelled, look-alikes included) or phone
    // again: the answer a new address gets, nothing to tell them apart.
    for (case, fields) in [
        ("same email", json!({"email": "adult@example.com"})),
        (
            "same email, other case",
            json!({"email": "  Adult@Example.COM "}),
        ),
        (
            "same email, fullwidth",
            json!({"email": "ａｄｕｌｔ@ｅｘａｍｐｌｅ.ｃｏｍ"}),
        ),
        (
            "same email, trailing dot",
            json!({"email": "adult@example.com."}),
        ),
        ("same phone", json!({"phone": "+4915112345678"})),
        (
            "same phone, fullwidth",
            json!({"phone": "＋４９１５１１２３４５６７８"}),
        ),
    ] {
        let r = c.post("/v1/auth/register", reg(fields)).await;
        let body = expect_ok(r, 202, case).await;
        assert_eq!(body, sent, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_401_and_alike() {
    let k = start().await;
    let c = signed_up(&k, "known").await;
    let login = |body: Value| c.post("/v1/auth/login", body);
    let wrong_password = expect(
        login(json!({"email": "known@example.com", "password": "wrong password"})).await,
        401,
        "unauthorized",
        "wrong password",
    )
    .await;
    let unknown_email = expect(
        login(json!({"email": "stranger@example.com", "password": PASSWORD})).await,
        401,
        "unauthorized",
        "unknown email",
    )
    .await;
    let unknown_phone = expect(
        login(json!({"phone": "+4915199999999", "password": PASSWORD})).await,
        401,
        "unauthorized",
        "unknown phone",
    )
    .await;
    let too_long = expect(
        login(json!({"email": "known@example.com", "password": format!("{PASSWORD}{}", "x".repeat(80))})).await,
        401,
        "unauthorized",
        "overlong password",
    )
    .await;
    assert_eq!(wrong_password, unknown_email);
    assert_eq!(wrong_password, unknown_phone);
    assert_eq!(wrong_password, too_long);
    // The right password still works, with any spelling of the email.
    expect_ok(
        login(json!({"email": " KNOWN@example.com", "password": PASSWORD})).await,
        200,
        "right password",
    )
    .await;
}

// ------------------------------------------------------ 2. authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_bearer_token_are_401() {
    let k = start().await;
    let owner = signed_up(&k, "owner").await;
    let job_id = enqueue(&owner, json!({"prompt": LIGHTHOUSE, "size": "256x256"})).await;
    let valid = owner.token.clone().unwrap();

    // A second session of another user, logged out.
    let mut revoked = signed_up(&k, "leaver").await;
    let kept = {
        let mut other = Client::new(&k.url(""));
        let r = other
            .post(
                "/v1/auth/login",
                json!({"email": "leaver@example.com", "password": PASSWORD}),
            )
            .await;
        let session = expect_ok(r, 200, "second login").await;
        other.token = Some(session["token"].as_str().unwrap().to_owned());
        other
    };
    let r = revoked
        .request(Method::POST, "/v1/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let revoked_token = revoked.token.take().unwrap();

    let mut tampered = valid.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let headers: Vec<(&str, Option<HeaderValue>)> = vec![
        ("no token", None),
        (
            "garbage token",
            Some(HeaderValue::from_static("Bearer garbage")),
        ),
        ("empty bearer", Some(HeaderValue::from_static("Bearer "))),
        ("bare scheme", Some(HeaderValue::from_static("Bearer"))),
        (
            "basic",
            Some(HeaderValue::from_static(
                "Basic b3duZXJAZXhhbXBsZS5jb206Y29ycmVjdCBob3JzZQ==",
            )),
        ),
        (
            "right token, other scheme",
            Some(HeaderValue::from_str(&format!("Token {valid}")).unwrap()),
        ),
        (
            "right token, no scheme",
            Some(HeaderValue::from_str(&valid).unwrap()),
        ),
        (
            "one character changed",
            Some(HeaderValue::from_str(&format!("Bearer {tampered}")).unwrap()),
        ),
        (
            "not ASCII",
            Some(HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap()),
        ),
        (
            "logged out",
            Some(HeaderValue::from_str(&format!("Bearer {revoked_token}")).unwrap()),
        ),
    ];
    let anon = anonymous(&k);
    let http = unpooled();
    let body = json!({"prompt": LIGHTHOUSE, "size": "256x256"});
    let mut details = BTreeSet::new();
    for (case, auth) in &headers {
        for (method, path) in [
            (Method::GET, "/v1/jobs".to_owned()),
            (Method::POST, "/v1/generations".to_owned()),
            (Method::GET, format!("/v1/jobs/{job_id}")),
            (Method::POST, format!("/v1/jobs/{job_id}/cancel")),
            (Method::POST, "/v1/auth/logout".to_owned()),
        ] {
            let mut req = http.request(method.clone(), k.url(&path));
            if method == Method::POST {
                req = req.json(&body);
            }
            if let Some(v) = auth {
                req = req.header(AUTHORIZATION, v.clone());
            }
            let r = req.send().await.unwrap();
            let p = expect(r, 401, "unauthorized", &format!("{case}: {method} {path}")).await;
            details.insert(p["detail"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(details.len(), 1, "401s tell cases apart: {details:?}");

    // None of that touched the job; the owner's token works, with the
    // scheme in any case; the logged-out user's other session is intact.
    let job = expect_ok(owner.get(&format!("/v1/jobs/{job_id}")).await, 200, "owner").await;
    assert_ne!(job["state"], "cancelled", "{job}");
    let r = anon
        .request(Method::GET, "/v1/jobs")
        .header(AUTHORIZATION, format!("bearer {valid}"))
        .send()
        .await
        .unwrap();
    expect_ok(r, 200, "lower-case scheme").await;
    expect_ok(kept.get("/v1/jobs").await, 200, "other session").await;
}

// ----------------------------------------------------------- 3. isolation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_jobs_and_images_do_not_exist_for_you() {
    // A finished generation needs workers: a `kiln` process.
    let k = start_binary().await;
    let a = signed_up(&k, "alice").await;
    let b = signed_up(&k, "bob").await;
    let job = generated(&a, json!({"prompt": LIGHTHOUSE, "size": "256x256"})).await;
    let job_id = job["id"].as_str().unwrap();
    let image_id = job["result"]["images"][0]["id"].as_str().unwrap();
    // B's own job, so B's list is not empty by construction.
    let b_job = enqueue(&b, json!({"prompt": "a barn at noon", "size": "256x256"})).await;

    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{job_id}")),
        (Method::GET, format!("/v1/jobs/{job_id}?wait=1")),
        (Method::POST, format!("/v1/jobs/{job_id}/cancel")),
        (Method::GET, format!("/v1/images/{image_id}")),
    ] {
        let r = b.request(method.clone(), &path).send().await.unwrap();
        expect(r, 404, "not_found", &format!("B: {method} {path}")).await;
    }
    // A nonexistent id answers exactly alike.
    let missing = uuid::Uuid::now_v7();
    let theirs = expect(
        b.get(&format!("/v1/jobs/{job_id}")).await,
        404,
        "not_found",
        "theirs",
    )
    .await;
    let nobodys = expect(
        b.get(&format!("/v1/jobs/{missing}")).await,
        404,
        "not_found",
        "nobody's",
    )
    .await;
    assert_eq!(theirs, nobodys);

    for query in [
        "".to_owned(),
        "?state=succeeded".to_owned(),
        "?kind=generate_image&limit=100".to_owned(),
        format!("?cursor={}", uuid::Uuid::now_v7()),
    ] {
        let page = expect_ok(b.get(&format!("/v1/jobs{query}")).await, 200, &query).await;
        let ids: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert!(
            !ids.contains(&job_id),
            "B sees A's job with {query:?}: {page}"
        );
        if query.is_empty() {
            assert_eq!(ids, [b_job.as_str()], "{page}");
        }
    }

    // A still has it all, and B's attempt to cancel changed nothing.
    let still = expect_ok(a.get(&format!("/v1/jobs/{job_id}")).await, 200, "A's job").await;
    assert_eq!(still["state"], "succeeded");
    expect_ok(
        a.get(&format!("/v1/images/{image_id}")).await,
        200,
        "A's image",
    )
    .await;
    let r = a
        .request(Method::POST, &format!("/v1/jobs/{job_id}/cancel"))
        .send()
        .await
        .unwrap();
    expect(r, 409, "conflict", "A cancels a finished job").await;
}

// --------------------------------------------------------- 4. signed URLs

/// `(path, expires, signature)` of a signed URL.
fn split_signed(url: &str) -> (String, String, String) {
    let (path, query) = url.split_once('?').unwrap();
    let mut expires = None;
    let mut signature = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = Some(v.to_owned()),
            Some(("signature", v)) => signature = Some(v.to_owned()),
            _ => panic!("unexpected query in {url}"),
        }
    }
    (path.to_owned(), expires.unwrap(), signature.unwrap())
}

fn flip_hex(s: &str, at: usize) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_serve_the_png_and_refuse_any_change() {
    // A finished generation needs workers: a `kiln` process.
    let k = start_binary().await;
    let a = signed_up(&k, "signer").await;
    let job = generated(&a, json!({"prompt": LIGHTHOUSE, "size": "256x256", "n": 2})).await;
    let images = job["result"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{job}");
    let url = images[0]["url"].as_str().unwrap();
    let other_url = images[1]["url"].as_str().unwrap();
    assert!(url.starts_with("/v1/files/images/"), "{url}");
    let (path, expires, signature) = split_signed(url);
    let (other_path, _, _) = split_signed(other_url);
    assert_ne!(path, other_path);

    // The URL needs no token: fetched anonymously.
    let anon = anonymous(&k);
    let r = anon.get(url).await;
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(content_type(&r), "image/png");
    let bytes = r.bytes().await.unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let mut reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (256, 256));
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    // The metadata agrees.
    assert_eq!(images[0]["width"], 256);
    assert_eq!(images[0]["height"], 256);
    assert_eq!(images[0]["bytes"], bytes.len());

    let later = expires.parse::<i64>().unwrap() + 3600;
    let forged = [
        (
            "one hex digit of the signature",
            format!(
                "{path}?expires={expires}&signature={}",
                flip_hex(&signature, 0)
            ),
        ),
        (
            "last hex digit of the signature",
            format!(
                "{path}?expires={expires}&signature={}",
                flip_hex(&signature, signature.len() - 1)
            ),
        ),
        (
            "a truncated signature",
            format!("{path}?expires={expires}&signature={}", &signature[..32]),
        ),
        (
            "signature not hex",
            format!("{path}?expires={expires}&signature=zz{}", &signature[2..]),
        ),
        (
            "empty signature",
            format!("{path}?expires={expires}&signature="),
        ),
        (
            "another image's path",
            format!("{other_path}?expires={expires}&signature={signature}"),
        ),
        (
            "a path that is not an image",
            format!("/v1/files/kiln.db?expires={expires}&signature={signature}"),
        ),
        (
            "an escaped path out of the store",
            format!(
                "/v1/files/images%2F..%2F..%2Fdata%2Fkiln.db?expires={expires}&signature={signature}"
            ),
        ),
        (
            "expires moved later",
            format!("{path}?expires={later}&signature={signature}"),
        ),
        (
            "expires moved earlier by a second",
            format!(
                "{path}?expires={}&signature={signature}",
                expires.parse::<i64>().unwrap() - 1
            ),
        ),
    ];
    for (case, forged_url) in &forged {
        expect(anon.get(forged_url).await, 403, "bad_signature", case).await;
    }
    for (case, bad) in [
        ("no signature", format!("{path}?expires={expires}")),
        ("no expires", format!("{path}?signature={signature}")),
        ("no query", path.clone()),
        (
            "expires not a number",
            format!("{path}?expires=soon&signature={signature}"),
        ),
        (
            "an extra parameter",
            format!("{path}?expires={expires}&signature={signature}&download=1"),
        ),
    ] {
        expect(anon.get(&bad).await, 400, "invalid_input", case).await;
    }
    // The untouched URL still works after all that.
    assert_eq!(anon.get(url).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_signed_url_is_403_url_expired() {
    let k = start_with(kiln(&[]).env("KILN_API_SIGNED_URL_TTL_SECS", 1)).await;
    let a = signed_up(&k, "expiry").await;
    let job = generated(&a, json!({"prompt": LIGHTHOUSE, "size": "256x256"})).await;
    let image_id = job["result"]["images"][0]["id"].as_str().unwrap();
    let image = expect_ok(a.get(&format!("/v1/images/{image_id}")).await, 200, "image").await;
    let url = image["url"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let anon = anonymous(&k);
    expect(anon.get(url).await, 403, "url_expired", "expired").await;
    // A forged expired URL is just forged: it learns nothing about expiry.
    let (path, expires, signature) = split_signed(url);
    let forged = format!(
        "{path}?expires={expires}&signature={}",
        flip_hex(&signature, 5)
    );
    expect(
        anon.get(&forged).await,
        403,
        "bad_signature",
        "forged and expired",
    )
    .await;
    // A fresh link works again.
    let image = expect_ok(a.get(&format!("/v1/images/{image_id}")).await, 200, "image").await;
    let fresh = image["url"].as_str().unwrap();
    let r = anon.get(fresh).await;
    // A one-second link may expire between signing and fetching; either
    // it serves the PNG or it is expired, never anything else.
    match r.status().as_u16() {
        200 => assert_eq!(content_type(&r), "image/png"),
        _ => {
            expect(r, 403, "url_expired", "fresh one-second link").await;
        }
    }
}

// ----------------------------------------------------------------- 5. fuzz

/// splitmix64: small, fixed-seed, good enough to pick garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn unicode(&mut self, len: usize) -> String {
        const ODD: &[char] = &[
            '\0',
            '\u{1}',
            '\u{7f}',
            '\u{85}',
            '\u{a0}',
            '\u{ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{202e}',
            '\u{2028}',
            '\u{feff}',
            '\u{fffd}',
            '\u{ffff}',
            '\u{10ffff}',
            '🦀',
            '👩',
            '\u{1f3fd}',
            'é',
            '\u{301}',
            'ß',
            'İ',
            'ﬀ',
            '中',
            'ي',
            '"',
            '\\',
            '\'',
            '%',
            '<',
            '>',
            '&',
            ';',
            '\n',
            '\t',
            ' ',
        ];
        (0..len)
            .map(|_| match self.below(3) {
                0 => *self.pick(ODD),
                1 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                _ => (b'a' + self.below(26) as u8) as char,
            })
            .collect()
    }
}

/// What the fuzzer knows of an endpoint.
struct Endpoint {
    path: &'static str,
    fields: &'static [&'static str],
    /// Successes a valid body may get.
    ok: &'static [u16],
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/v1/generations",
        fields: &["prompt", "model", "size", "n"],
        ok: &[200, 202],
    },
    Endpoint {
        path: "/v1/auth/register",
        fields: &["email", "phone", "password", "birth_date", "referral_code"],
        ok: &[202],
    },
    Endpoint {
        path: "/v1/auth/login",
        fields: &["email", "phone", "password"],
        ok: &[200],
    },
];

fn valid_body(path: &str, i: usize) -> Value {
    match path {
        "/v1/generations" => json!({"prompt": LIGHTHOUSE, "size": "256x256"}),
        "/v1/auth/register" => json!({
            "email": format!("fuzz{i}@example.com"),
            "password": PASSWORD,
            "birth_date": "1990-01-01",
        }),
        _ => json!({"email": "fuzzer@example.com", "password": PASSWORD}),
    }
}

/// A plausible-or-not value for any field.
fn field_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 9 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 => json!(*rng.pick(&[0_i64, 1, 4, 5, -1, i64::MAX, i64::MIN])),
        3 => json!(*rng.pick(&[0.5_f64, -0.0, 1e308, -1e308, f64::MIN_POSITIVE])),
        4 => json!(*rng.pick(&[
            LIGHTHOUSE,
            "256x256",
            "1024x1536",
            "dev-image-1",
            "fuzzer@example.com",
            "+4915112345678",
            PASSWORD,
            "1990-01-01",
            "2015-01-01",
            "",
            " ",
            "null",
            "ABCDEFGHJK",
        ])),
        5 => {
            let len = rng.below(64);
            json!(rng.unicode(len))
        }
        6 => json!("x".repeat(*rng.pick(&[255, 4000, 4001, 20_000]))),
        7 => json!(format!("{}\u{0}{}", rng.unicode(3), rng.unicode(3))),
        8 => json!(u64::MAX),
        9 => Value::Array(
            (0..rng.below(4))
                .map(|_| field_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut object = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                let key = rng.unicode(4);
                object.insert(key, field_value(rng, depth + 1));
            }
            Value::Object(object)
        }
    }
}

/// One garbage (or occasionally valid) body for this endpoint, and the
/// content type to send it with.
fn garbage(rng: &mut Rng, endpoint: &Endpoint, i: usize) -> (Vec<u8>, &'static str) {
    let json_type = "application/json";
    let body: Vec<u8> = match rng.below(12) {
        // Random bytes.
        0 => {
            let len = rng.below(512);
            rng.bytes(len)
        }
        // Random JSON-ish punctuation.
        1 => {
            const ALPHABET: &[u8] = b"{}[]\":,0123456789.eE+-truefalsn \\u";
            (0..rng.below(200)).map(|_| *rng.pick(ALPHABET)).collect()
        }
        // Deep nesting, as the whole body or as one field.
        2 => {
            let depth = 1 + rng.below(10_000);
            let (open, close) = *rng.pick(&[("[", "]"), ("{\"a\":", "}")]);
            let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            if rng.one_in(2) {
                nested.into_bytes()
            } else {
                format!("{{\"{}\":{nested}}}", rng.pick(endpoint.fields)).into_bytes()
            }
        }
        // Huge and odd numbers in a valid body.
        3 => {
            let number = *rng.pick(&[
                "1e999",
                "-1e999",
                "18446744073709551616",
                "99999999999999999999999999999999999999",
                "1.0e-400",
                "-0",
                "0.0",
                "4294967297",
                "1E2",
            ]);
            let field = rng.pick(endpoint.fields);
            let mut body = valid_body(endpoint.path, i);
            body[*field] = Value::Null;
            body.to_string().replacen("null", number, 1).into_bytes()
        }
        // Nulls in every field, or in some.
        4 => {
            let mut body = valid_body(endpoint.path, i);
            for field in endpoint.fields {
                if rng.one_in(2) || i.is_multiple_of(2) {
                    body[*field] = Value::Null;
                }
            }
            body.to_string().into_bytes()
        }
        // Arrays instead of objects.
        5 => {
            let items: Vec<Value> = (0..rng.below(6)).map(|_| field_value(rng, 1)).collect();
            Value::Array(items).to_string().into_bytes()
        }
        // Unicode everywhere.
        6 => {
            let mut body = serde_json::Map::new();
            for field in endpoint.fields {
                if rng.one_in(2) {
                    let len = 1 + rng.below(100);
                    body.insert((*field).to_owned(), json!(rng.unicode(len)));
                }
            }
            if rng.one_in(4) {
                let len = rng.below(8);
                body.insert(rng.unicode(len), json!(rng.unicode(8)));
            }
            Value::Object(body).to_string().into_bytes()
        }
        // NUL bytes: raw, escaped, in keys.
        7 => match rng.below(3) {
            0 => {
                let mut body = valid_body(endpoint.path, i).to_string().into_bytes();
                let at = rng.below(body.len());
                body.insert(at, 0);
                body
            }
            1 => {
                let mut body = valid_body(endpoint.path, i);
                let field = rng.pick(endpoint.fields);
                body[*field] = json!(format!("a\u{0}b"));
                body.to_string().into_bytes()
            }
            _ => b"{\"\\u0000\": \"\\u0000\"}".to_vec(),
        },
        // Random fields with random values.
        8 => {
            let mut body = serde_json::Map::new();
            for field in endpoint.fields {
                if !rng.one_in(3) {
                    body.insert((*field).to_owned(), field_value(rng, 0));
                }
            }
            Value::Object(body).to_string().into_bytes()
        }
        // A valid body, mutated byte by byte.
        9 => {
            let mut body = valid_body(endpoint.path, i).to_string().into_bytes();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body.len());
                match rng.below(3) {
                    0 => body[at] = rng.next() as u8,
                    1 => body.insert(at, rng.next() as u8),
                    _ => {
                        body.remove(at);
                    }
                }
                if body.is_empty() {
                    break;
                }
            }
            body
        }
        // Escapes serde_json must refuse: lone surrogates, bad escapes.
        10 => {
            let escape = *rng.pick(&["\\ud800", "\\udfff", "\\ud83e\\u0041", "\\u12", "\\q", "\\"]);
            let field = rng.pick(endpoint.fields);
            format!("{{\"{field}\":\"a{escape}b\"}}").into_bytes()
        }
        // A valid body: it must be taken.
        _ => valid_body(endpoint.path, i).to_string().into_bytes(),
    };
    let content_type = if rng.one_in(10) {
        *rng.pick(&[
            "text/plain",
            "application/json; charset=latin1",
            "application/problem+json",
            "application/octet-stream",
            "*/*",
        ])
    } else {
        json_type
    };
    (body, content_type)
}

/// Garbage the `Authorization` header can carry.
fn garbage_header(rng: &mut Rng) -> HeaderValue {
    let len = rng.below(80);
    let bytes: Vec<u8> = (0..len)
        .map(|_| match rng.next() as u8 {
            b if b == b'\t' || (b >= 0x20 && b != 0x7f) => b,
            b => b'a' + b % 26,
        })
        .collect();
    const PREFIXES: &[&[u8]] = &[b"", b"Bearer ", b"bearer ", b"Basic "];
    let prefix = *rng.pick(PREFIXES);
    HeaderValue::from_bytes(&[prefix, &bytes].concat()).unwrap()
}

/// What is wrong with an answer to garbage, if anything: a 5xx, a 2xx
/// that is not one of `ok`, or a 4xx that is not problem+json.
async fn check_answer(
    r: Result<reqwest::Response, reqwest::Error>,
    ok: &[u16],
    case: &str,
) -> Option<String> {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Some(format!("{case}: no answer: {e}")),
    };
    let status = r.status().as_u16();
    let ct = content_type(&r);
    let text = r.text().await.unwrap_or_default();
    if ok.contains(&status) {
        return None;
    }
    if !(400..500).contains(&status) {
        return Some(format!("{case}: {status} {text}"));
    }
    if ct != "application/problem+json" {
        return Some(format!("{case}: {status} as {ct:?}: {text}"));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(p) if p["status"] == status && p["code"].is_string() && p["detail"].is_string() => None,
        _ => Some(format!("{case}: {status} not a problem: {text}")),
    }
}

fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let cut: String = text.chars().take(200).collect();
    format!("{cut:?} ({} bytes)", body.len())
}

async fn fuzz(k: &Kiln, seed: u64) {
    let c = signed_up(k, "fuzzer").await;
    let anon = anonymous(k);
    // A connection per request: the server may hang up after answering
    // without reading a body (415, 401), and a pooled connection reused in
    // that moment fails in the client, not in the API under test.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let token = c.token.clone().unwrap();
    let post = |path: &str| http.post(k.url(path));
    let mut rng = Rng(seed);
    let mut accepted = 0;
    let mut failures = Vec::new();
    for endpoint in ENDPOINTS {
        for i in 0..200 {
            let (body, ct) = garbage(&mut rng, endpoint, i);
            let case = format!(
                "seed {seed} #{i} POST {} [{ct}] {}",
                endpoint.path,
                shown(&body)
            );
            let mut req = post(endpoint.path)
                .bearer_auth(&token)
                .header(CONTENT_TYPE, ct)
                .body(body);
            if endpoint.path == "/v1/generations" && rng.one_in(8) {
                req = req.header("Idempotency-Key", garbage_header(&mut rng));
            }
            let r = req.send().await;
            if r.as_ref()
                .is_ok_and(|r| endpoint.ok.contains(&r.status().as_u16()))
            {
                accepted += 1;
            }
            failures.extend(check_answer(r, endpoint.ok, &case).await);
        }
    }
    assert!(accepted > 0, "no valid body was ever accepted");
    // Endpoints that take no body: garbage bodies and tokens.
    let own = enqueue(&c, json!({"prompt": LIGHTHOUSE, "size": "256x256"})).await;
    for i in 0..200 {
        let (body, ct) = garbage(&mut rng, &ENDPOINTS[0], i);
        let (path, ok): (String, &[u16]) = match rng.below(3) {
            0 => ("/v1/auth/logout".to_owned(), &[]),
            1 => (format!("/v1/jobs/{own}/cancel"), &[]),
            _ => (format!("/v1/jobs/not-a-uuid-{i}/cancel"), &[]),
        };
        let case = format!("seed {seed} #{i} POST {path} {}", shown(&body));
        let r = post(&path)
            .header(AUTHORIZATION, garbage_header(&mut rng))
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
            .await;
        failures.extend(check_answer(r, ok, &case).await);
    }
    for i in 0..50 {
        let (body, ct) = garbage(&mut rng, &ENDPOINTS[0], i);
        let path = if i % 2 == 0 {
            format!("/v1/jobs/{own}/cancel")
        } else {
            format!("/v1/jobs/{}/cancel", uuid::Uuid::now_v7())
        };
        let case = format!("seed {seed} #{i} POST {path} {}", shown(&body));
        let r = post(&path)
            .bearer_auth(&token)
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
            .await;
        failures.extend(check_answer(r, &[200], &case).await);
    }

    let log = k.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(5)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of the answers to garbage were wrong:\n{}\nkiln's first errors:\n{}",
        failures.len(),
        failures.join("\n"),
        errors.join("\n")
    );

    // Still healthy, still serving, nothing panicked.
    expect_ok(anon.get("/healthz").await, 200, "healthz").await;
    expect_ok(anon.get("/readyz").await, 200, "readyz").await;
    expect_ok(
        c.post(
            "/v1/generations",
            json!({"prompt": "a lighthouse after the storm", "size": "256x256"}),
        )
        .await,
        202,
        "a valid generation after the fuzz",
    )
    .await;
    let r = c
        .request(Method::POST, "/v1/auth/logout")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "logout ignores its body");
    let log = k.log_text();
    assert!(!log.contains("panicked"), "kiln panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_never_get_a_5xx_on_sqlite() {
    // Reads the process's log for errors and panics: a `kiln` process.
    let k = start_binary().await;
    fuzz(&k, 0x6b69_6c6e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_never_get_a_5xx_on_postgres() {
    let db = TestDatabase::postgres().await;
    let k = start_with(kiln(&[]).database(&db.url)).await;
    fuzz(&k, 0x6b69_6c6e).await;
}

/// PostgreSQL `text` cannot hold U+0000 (SQLite can), so every string
/// that reaches the database must be refused (or cleaned) first: a NUL is
/// bad input, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_bad_input_not_a_500_on_postgres() {
    let db = TestDatabase::postgres().await;
    let k = start_with(kiln(&[]).database(&db.url)).await;
    let c = signed_up(&k, "nul").await;
    let referral = {
        let r = c
            .post(
                "/v1/auth/register",
                json!({"email": "nulref@example.com", "password": PASSWORD, "birth_date": "1990-01-01"}),
            )
            .await;
        expect_ok(r, 202, "referrer").await;
        let code = k.latest_code("nulref@example.com").await;
        let r = c
            .post(
                "/v1/auth/verify",
                json!({"email": "nulref@example.com", "code": code}),
            )
            .await;
        expect_ok(r, 200, "referrer verified").await["referral_code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let posts = [
        (
            "/v1/generations",
            json!({"prompt": "a light\u{0}house", "size": "256x256"}),
            &[202][..],
        ),
        (
            "/v1/generations",
            json!({"prompt": "\u{0}", "size": "256x256"}),
            &[202],
        ),
        (
            "/v1/auth/register",
            json!({"email": "a\u{0}b@example.com", "password": PASSWORD, "birth_date": "1990-01-01"}),
            &[202],
        ),
        (
            "/v1/auth/register",
            json!({"email": "nul2@example.com", "password": PASSWORD, "birth_date": "1990-01-01",
                   "referral_code": format!("{referral}\u{0}")}),
            &[202],
        ),
        (
            "/v1/auth/register",
            json!({"email": "nul3@example.com", "password": "correct\u{0}horse", "birth_date": "1990-01-01"}),
            &[202],
        ),
        (
            "/v1/auth/login",
            json!({"email": "nul\u{0}@example.com", "password": PASSWORD}),
            &[200],
        ),
        (
            "/v1/auth/login",
            json!({"email": "nul@example.com", "password": "correct horse\u{0}battery"}),
            &[200],
        ),
    ];
    let mut failures = Vec::new();
    for (path, body, ok) in posts {
        let case = format!("POST {path} {body}");
        failures.extend(check_answer(Ok(c.post(path, body).await), ok, &case).await);
    }
    for path in ["/v1/jobs?kind=generate%00image", "/v1/jobs?state=%00"] {
        failures.extend(check_answer(Ok(c.get(path).await), &[200], &format!("GET {path}")).await);
    }
    let log = k.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(8)
        .collect();
    assert!(
        failures.is_empty(),
        "{} answers were wrong:\n{}\nkiln's first errors:\n{}",
        failures.len(),
        failures.join("\n"),
        errors.join("\n")
    );
}

// -------------------------------------------------------------- 6. OpenAPI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route_and_the_problem_schema() {
    let k = start().await;
    let doc = expect_ok(anonymous(&k).get("/openapi.json").await, 200, "openapi").await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let routes = [
        ("/v1/auth/register", "post"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/generations", "post"),
        ("/v1/generations/batch", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}/cancel", "post"),
        ("/v1/images/{id}", "get"),
        ("/v1/files/{key}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in routes {
        assert!(
            paths.get(path).is_some_and(|p| p.get(method).is_some()),
            "{method} {path} missing; paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(
            problem["properties"].get(field).is_some(),
            "Problem lacks {field}: {problem}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Errors are documented as the server sends them: problem+json.
    let mut problems = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let content = response["content"].as_object();
                let refs = |media: &str| {
                    content
                        .and_then(|c| c.get(media))
                        .and_then(|m| m["schema"]["$ref"].as_str())
                        .is_some_and(|r| r.ends_with("/Problem"))
                };
                assert!(
                    !refs("application/json"),
                    "{method} {path} {status}: a problem documented as application/json"
                );
                if refs("application/problem+json") {
                    problems += 1;
                }
            }
        }
    }
    assert!(
        problems > 50,
        "only {problems} problem responses documented"
    );
    // What the server refuses, the document refuses too: pages of 1 to
    // 100, cursors in the form the API gives them out.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let schema = &p["schema"];
                match p["name"].as_str() {
                    Some("limit") => assert!(
                        schema["minimum"] == 1 && schema["maximum"] == 100,
                        "{method} {path} limit: {schema}"
                    ),
                    Some("cursor") => assert!(
                        schema["format"] == "uuid" || schema["pattern"].is_string(),
                        "{method} {path} cursor has no format: {schema}"
                    ),
                    _ => {}
                }
            }
        }
    }
    // Every reference resolves within the document.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    // And every documented path is served: a GET of the path (ids filled
    // in) never falls through to the unknown-route 404.
    let anon = anonymous(&k);
    for path in paths.keys() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{key}", "images/x.png");
        let r = anon.get(&concrete).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert!(
            !body.contains("no such route"),
            "{path} documented but not routed: {status} {body}"
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    if let Some(s) = value.as_str() {
                        out.push(s.to_owned());
                    }
                } else {
                    collect_refs(value, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_limited_per_address_and_per_ip_even_when_then_right() {
    let db = TestDatabase::sqlite();
    let store = db.store().await.expect("a scratch store");
    let api = TestApi::with_config(
        store,
        kiln_api::ApiConfig {
            login_failures_per_ip: 8,
            ..kiln_api::testing::test_config()
        },
    )
    .keeping(db);
    let k = InProcess {
        server: api.serve().await,
        _api: api,
    };
    let c = signed_up(&k, "guarded").await;
    let login = |email: &str, password: &str| {
        c.post(
            "/v1/auth/login",
            json!({"email": email, "password": password}),
        )
    };
    for n in 0..5 {
        let r = login("guarded@example.com", "not it at all").await;
        assert_eq!(r.status(), 401, "wrong password {n}");
    }
    // The sixth is refused, and so is the right password now: otherwise
    // the limit would tell a guesser when a guess was right.
    for password in ["not it at all", PASSWORD] {
        let r = login("guarded@example.com", password).await;
        assert!(r.headers().contains_key("retry-after"));
        expect(r, 429, "rate_limited", "past the limit").await;
    }
    // Three more wrong ones to other addresses reach the IP's 8.
    for n in 0..3 {
        let r = login(&format!("other{n}@example.com"), "not it at all").await;
        assert_eq!(r.status(), 401, "other address {n}");
    }
    expect(
        login("fresh@example.com", "not it at all").await,
        429,
        "rate_limited",
        "past the IP's limit",
    )
    .await;
}
