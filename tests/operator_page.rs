//! The operator page's sign-in, cookie and CSRF through the real router in
//! process: only operators get a session and the page (others 403 with no
//! data, on the page and on the admin API with a cookie), the cookie's
//! flags, the security headers, and a change made with the cookie but
//! without the session's CSRF token is refused; changes made with it are
//! audited with the operator and the IP.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::operators::{OPERATOR_IP, PASSWORD, World, world};
use std::net::SocketAddr;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode, header},
};
use kiln_api::testing::TestResponse;
use kiln_store::{
    Failure, JobState, NewJob,
    access_log::{AccessEntry, AccessEvent},
    accounts::Identifier,
};
use serde_json::{Value, json};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `application/x-www-form-urlencoded` of one value.
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn header<'a>(r: &'a TestResponse, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn text(r: &TestResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The session token a `Set-Cookie` hands over.
fn cookie_token(r: &TestResponse) -> Option<String> {
    let set = header(r, "set-cookie");
    set.strip_prefix("kiln_admin=")
        .and_then(|rest| rest.split(';').next())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The CSRF token the page carries in its `<meta>`.
fn csrf_in(page: &str) -> String {
    let at = page
        .find(r#"<meta name="csrf-token" content=""#)
        .expect("the page has its CSRF token");
    let rest = &page[at + r#"<meta name="csrf-token" content=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_security_headers(r: &TestResponse, what: &str) {
    assert_eq!(header(r, "content-security-policy"), CSP, "{what}");
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header(r, "cache-control"), "no-store", "{what}");
}

/// How a request reaches kiln.
#[derive(Clone, Copy)]
enum From {
    /// Through the proxy, from the operator's IP.
    Proxy,
    /// A browser on this machine over plain http.
    Loopback,
    /// From this machine, but the page was posted from an https origin (a
    /// TLS proxy on the same host).
    LoopbackHttps,
}

impl World {
    async fn send(
        &self,
        method: Method,
        path: &str,
        from: From,
        headers: &[(&str, &str)],
        body: Body,
    ) -> TestResponse {
        let mut req = Request::builder().method(method).uri(path);
        match from {
            From::Proxy => req = req.header("x-forwarded-for", OPERATOR_IP),
            From::Loopback | From::LoopbackHttps => {
                let origin = match from {
                    From::Loopback => "http://127.0.0.1:8080",
                    _ => "https://kiln.example.com",
                };
                req = req
                    .header(header::HOST, "127.0.0.1:8080")
                    .header(header::ORIGIN, origin)
                    .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
            }
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.api.send(req.body(body).unwrap()).await
    }

    /// Signs in through the page's form.
    async fn form_login(&self, account: &str, password: &str, from: From) -> TestResponse {
        let body = format!("account={}&password={}", enc(account), enc(password));
        self.send(
            Method::POST,
            "/admin/login",
            from,
            &[(
                header::CONTENT_TYPE.as_str(),
                "application/x-www-form-urlencoded",
            )],
            Body::from(body),
        )
        .await
    }

    /// Olga's page session: its cookie token and the page's CSRF token.
    async fn olga_page(&self) -> (String, String) {
        let r = self
            .form_login("olga@example.com", PASSWORD, From::Proxy)
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
        let token = cookie_token(&r).expect("a session cookie");
        let page = self.with_cookie(Method::GET, "/admin", &token, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
        (token, csrf_in(&text(&page)))
    }

    /// A request with the admin cookie (and a CSRF token when given).
    async fn with_cookie(
        &self,
        method: Method,
        path: &str,
        token: &str,
        csrf: Option<&str>,
    ) -> TestResponse {
        self.with_cookie_json(method, path, token, csrf, None).await
    }

    async fn with_cookie_json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let cookie = format!("theme=dark; kiln_admin={token}");
        let mut headers = vec![(header::COOKIE.as_str(), cookie.as_str())];
        if let Some(csrf) = csrf {
            headers.push(("x-csrf-token", csrf));
        }
        let body = match body {
            Some(json) => {
                headers.push((header::CONTENT_TYPE.as_str(), "application/json"));
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(method, path, From::Proxy, &headers, body).await
    }

    /// A `probe` job that failed for good with this error message.
    async fn failed_job(&self, message: &str) -> uuid::Uuid {
        let store = self.api.store();
        let id = store
            .enqueue(NewJob::of(&kiln_jobs::Probe::default()).unwrap())
            .await
            .unwrap()
            .id;
        let claimed = store
            .claim(
                "w",
                &["default".to_owned()],
                1,
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap()
            .remove(0);
        assert_eq!(claimed.lease.id, id);
        let failure = Failure {
            code: "probe_failure".into(),
            message: message.into(),
            retry_in: None,
        };
        assert!(store.fail(claimed.lease, failure).await.unwrap());
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        id
    }

    async fn paused(&self, queue: &str) -> bool {
        self.api
            .store()
            .queue_settings()
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == queue && s.paused)
    }

    /// `POST /admin/logout` from the page's form, with this CSRF token.
    async fn logout(&self, token: &str, csrf: &str) -> TestResponse {
        let cookie = format!("kiln_admin={token}");
        self.send(
            Method::POST,
            "/admin/logout",
            From::Proxy,
            &[
                (
                    header::CONTENT_TYPE.as_str(),
                    "application/x-www-form-urlencoded",
                ),
                (header::COOKIE.as_str(), cookie.as_str()),
            ],
            Body::from(format!("csrf={}", enc(csrf))),
        )
        .await
    }

    /// Olga's access-log entries, oldest first.
    async fn olga_log(&self) -> Vec<AccessEntry> {
        let mut entries = self
            .api
            .store()
            .access_log(self.olga_id, None, 100)
            .await
            .unwrap();
        entries.reverse();
        entries
    }
}

#[tokio::test]
async fn only_operators_sign_in_and_the_cookie_is_strict() {
    let w = world().await;

    // No session: the page sends to the sign-in form.
    let r = w
        .send(Method::GET, "/admin", From::Proxy, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/admin/login");
    assert_security_headers(&r, "GET /admin signed out");
    let r = w
        .send(Method::GET, "/admin/login", From::Proxy, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_security_headers(&r, "GET /admin/login");
    assert!(text(&r).contains(r#"<form method="post" action="/admin/login""#));

    // A right password without the role: 403, no session, no data.
    let entries_before = w.olga_log().await.len();
    let r = w.form_login("ada@example.com", PASSWORD, From::Proxy).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    assert!(r.headers.get("set-cookie").is_none());
    let page = text(&r);
    assert!(page.contains("does not have the operator role"), "{page}");
    assert!(!page.contains("csrf-token") && !page.contains("admin.js"));
    // A wrong password: 401, no session.
    let r = w
        .form_login("olga@example.com", "wrong horse battery", From::Proxy)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", text(&r));
    assert!(r.headers.get("set-cookie").is_none());
    assert!(text(&r).contains("wrong email, phone or password"));
    // Not an address at all.
    let r = w.form_login("not an address", PASSWORD, From::Proxy).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // The operator: a session cookie with every flag, Secure through the
    // proxy.
    let r = w
        .form_login("olga@example.com", PASSWORD, From::Proxy)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert_eq!(header(&r, "location"), "/admin");
    let cookie = header(&r, "set-cookie").to_owned();
    let flags: Vec<&str> = cookie.split("; ").skip(1).collect();
    assert_eq!(
        flags,
        [
            "Path=/admin",
            "Max-Age=43200",
            "HttpOnly",
            "SameSite=Strict",
            "Secure"
        ],
        "{cookie}"
    );
    let token = cookie_token(&r).unwrap();
    assert_eq!(token.len(), 43, "a session token like the API's");
    // It is an ordinary session: the sign-in is in the access log, marked
    // as the page's, with the IP (and, a first from there, a new-IP entry).
    let log = w.olga_log().await;
    let new: Vec<(AccessEvent, Option<&str>, Option<&Value>)> = log[entries_before..]
        .iter()
        .map(|e| (e.event, e.ip.as_deref(), e.detail.as_ref()))
        .collect();
    assert_eq!(
        new,
        [
            (AccessEvent::LoginFailed, Some(OPERATOR_IP), None),
            (
                AccessEvent::Login,
                Some(OPERATOR_IP),
                Some(&json!({"via": "operator_page"}))
            ),
            (AccessEvent::NewIp, Some(OPERATOR_IP), None),
        ]
    );

    // The page, with its CSRF token.
    let r = w.with_cookie(Method::GET, "/admin", &token, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_security_headers(&r, "GET /admin");
    let page = text(&r);
    let csrf = csrf_in(&page);
    assert_eq!(csrf.len(), 32, "{csrf}");
    assert!(csrf.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(page.contains(r#"<script src="/admin/assets/admin.js" defer></script>"#));
    // A second session has a CSRF token of its own.
    let (_, other_csrf) = w.olga_page().await;
    assert_ne!(csrf, other_csrf);

    // Plain http on loopback (a developer's browser, the browser test):
    // no Secure, which the browser would not send back over http.
    let r = w
        .form_login("olga@example.com", PASSWORD, From::Loopback)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cookie = header(&r, "set-cookie");
    assert!(
        cookie.contains("HttpOnly; SameSite=Strict") && !cookie.contains("Secure"),
        "{cookie}"
    );
    // From loopback but posted from an https page (a TLS proxy on the
    // same machine): Secure.
    let r = w
        .form_login("olga@example.com", PASSWORD, From::LoopbackHttps)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(header(&r, "set-cookie").ends_with("; Secure"));

    // The page's files: typed, under the same policy.
    for (path, content_type) in [
        ("/admin/assets/admin.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/admin.css", "text/css; charset=utf-8"),
    ] {
        let r = w
            .send(Method::GET, path, From::Proxy, &[], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(header(&r, "content-type"), content_type, "{path}");
        assert_security_headers(&r, path);
    }
}

#[tokio::test]
async fn non_operators_get_403_and_no_data_with_a_cookie() {
    let w = world().await;
    let job = w.failed_job("quota exceeded for ada@example.com").await;
    // Ada's own session in the cookie (the sign-in form would not give
    // her one, but a session is a session).
    let ada = w.ada.clone();
    let r = w.with_cookie(Method::GET, "/admin", &ada, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_security_headers(&r, "GET /admin as Ada");
    let page = text(&r);
    assert!(page.contains("does not have the operator role"));
    assert!(
        !page.contains("csrf-token") && !page.contains("admin.js"),
        "{page}"
    );
    for path in [
        "/admin/v1/queues".to_owned(),
        "/admin/v1/jobs?state=failed".to_owned(),
        format!("/admin/v1/jobs/{job}"),
        "/admin/v1/workers".to_owned(),
    ] {
        let r = w.with_cookie(Method::GET, &path, &ada, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(r.content_type(), "application/problem+json", "{path}");
        assert_eq!(r.json()["code"], "forbidden", "{path}");
        let body = text(&r);
        for data in [job.to_string().as_str(), "quota", "probe", "default"] {
            assert!(!body.contains(data), "{path} tells {data}: {body}");
        }
        assert_security_headers(&r, &path);
    }

    // An operator who loses the role loses the page at once.
    let (token, csrf) = w.olga_page().await;
    let r = w
        .with_cookie(Method::GET, "/admin/v1/queues", &token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    w.api
        .store()
        .set_operator(&Identifier::Email("olga@example.com".into()), false)
        .await
        .unwrap();
    let r = w.with_cookie(Method::GET, "/admin", &token, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!text(&r).contains(&csrf));
    let r = w
        .with_cookie(Method::GET, "/admin/v1/queues", &token, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // No cookie, no bearer: 401.
    let r = w
        .send(
            Method::GET,
            "/admin/v1/queues",
            From::Proxy,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn changes_with_the_cookie_need_the_sessions_csrf_token_and_are_audited() {
    let w = world().await;
    let job = w.failed_job("<script>alert(1)</script>").await;
    let (token, csrf) = w.olga_page().await;
    let (_, other_sessions_csrf) = w.olga_page().await;

    // Reads need no token.
    let r = w
        .with_cookie(Method::GET, "/admin/v1/queues", &token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_security_headers(&r, "GET /admin/v1/queues");
    let r = w
        .with_cookie(Method::GET, &format!("/admin/v1/jobs/{job}"), &token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["error_messages"][0]["message"],
        "<script>alert(1)</script>"
    );

    // Changes without it, or with another's, change nothing.
    let pause = "/admin/v1/queues/default/pause";
    let retry = format!("/admin/v1/jobs/{job}/retry");
    let zeros = "0".repeat(32);
    for (csrf, why) in [
        (None, "no token"),
        (Some(""), "an empty token"),
        (Some(zeros.as_str()), "a wrong token"),
        (
            Some(other_sessions_csrf.as_str()),
            "another session's token",
        ),
        (Some(token.as_str()), "the session token itself"),
    ] {
        for (method, path) in [(Method::POST, pause), (Method::POST, retry.as_str())] {
            let r = w.with_cookie(method, path, &token, csrf).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with {why}");
            assert_eq!(r.content_type(), "application/problem+json");
            assert_eq!(r.json()["code"], "csrf_token", "{path} with {why}");
        }
        let bulk = json!({"action": "retry", "filter": {"state": "failed"}});
        let r = w
            .with_cookie_json(
                Method::POST,
                "/admin/v1/jobs/bulk",
                &token,
                csrf,
                Some(bulk),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "bulk with {why}");
        let limit = json!({"limit": 2});
        let r = w
            .with_cookie_json(
                Method::PUT,
                "/admin/v1/queues/default/concurrency",
                &token,
                csrf,
                Some(limit),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "concurrency with {why}");
    }
    assert!(!w.paused("default").await);
    let still = w.api.store().get(job).await.unwrap().unwrap();
    assert_eq!(still.state, JobState::Failed);
    assert_eq!(still.attempt, 1);

    // With the session's token they go through, audited with the
    // operator and the IP.
    let before = w.olga_log().await.len();
    let r = w
        .with_cookie(Method::POST, pause, &token, Some(&csrf))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(r.json()["paused"], true);
    assert!(w.paused("default").await);
    let r = w
        .with_cookie(Method::POST, &retry, &token, Some(&csrf))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(r.json()["state"], "available");
    let r = w
        .with_cookie(
            Method::POST,
            "/admin/v1/queues/default/resume",
            &token,
            Some(&csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!w.paused("default").await);
    let bulk = json!({"action": "discard", "filter": {"state": "available", "queue": "default"}});
    let r = w
        .with_cookie_json(
            Method::POST,
            "/admin/v1/jobs/bulk",
            &token,
            Some(&csrf),
            Some(bulk),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(r.json()["count"], 1);
    let log = w.olga_log().await;
    let actions: Vec<(AccessEvent, Option<&str>, Option<&Value>)> = log[before..]
        .iter()
        .map(|e| (e.event, e.ip.as_deref(), e.detail.as_ref()))
        .collect();
    assert_eq!(
        actions,
        [
            (
                AccessEvent::OperatorQueuePaused,
                Some(OPERATOR_IP),
                Some(&json!({"queue": "default"}))
            ),
            (
                AccessEvent::OperatorJobRetried,
                Some(OPERATOR_IP),
                Some(&json!({"job_id": job, "was": "failed"}))
            ),
            (
                AccessEvent::OperatorQueueResumed,
                Some(OPERATOR_IP),
                Some(&json!({"queue": "default"}))
            ),
            (
                AccessEvent::OperatorBulkAction,
                Some(OPERATOR_IP),
                Some(
                    &json!({"action": "discard", "filter": {"state": "available", "kind": null, "queue": "default", "owner": null}, "count": 1, "cancelling": 0})
                )
            ),
        ]
    );

    // A bearer token needs no CSRF token (no other site can send one).
    let r = w
        .api
        .request(Method::POST, pause, None, Some(&w.olga))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The cookie opens only the admin routes.
    let r = w
        .with_cookie(Method::GET, "/v1/credits", &token, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session() {
    let w = world().await;
    let (token, csrf) = w.olga_page().await;
    // Without the token (another site's form): refused, still signed in.
    let r = w.logout(&token, "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "csrf_token");
    let r = w.logout(&token, &"0".repeat(32)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w.with_cookie(Method::GET, "/admin", &token, None).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = w.logout(&token, &csrf).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/admin/login");
    assert!(
        header(&r, "set-cookie").starts_with("kiln_admin=; Path=/admin; Max-Age=0;"),
        "{}",
        header(&r, "set-cookie")
    );
    assert_eq!(
        w.olga_log().await.last().unwrap().event,
        AccessEvent::Logout
    );
    // The session is gone everywhere.
    let r = w.with_cookie(Method::GET, "/admin", &token, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = w
        .with_cookie(Method::GET, "/admin/v1/queues", &token, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = w
        .api
        .request(Method::GET, "/admin/v1/queues", None, Some(&token))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
