//! An in-process API for tests: the real [`router`](crate::router) over a
//! real [`AppState`] on a real store, without starting a `kiln` process.
//!
//! Requests go through the router directly ([`TestApi::request`], no
//! socket) or over HTTP to a server on an ephemeral 127.0.0.1 port
//! ([`TestApi::serve`]) for clients that need a real connection.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use kiln_store::{CodeKey, Objects, Store, StoreError, UrlSigner, testing::TestDatabase};
use tower::ServiceExt;

use crate::{ApiConfig, AppState, CreditsConfig, LocalThrottle, Shop};
use kiln_providers::payments::PaymentsSettings;

/// An API over one store, with the production defaults except a bcrypt
/// cost of 4 (tests need no brute-force resistance), objects in memory and
/// a fresh random URL-signing key.
pub struct TestApi {
    pub state: AppState,
    /// The scratch database behind `state.store`, when this value made it.
    _db: Option<TestDatabase>,
}

/// The settings tests run the API with.
pub fn test_config() -> ApiConfig {
    ApiConfig {
        bcrypt_cost: 4,
        ..ApiConfig::default()
    }
}

impl TestApi {
    /// An API over `store` with [`test_config`].
    pub fn new(store: Store) -> TestApi {
        TestApi::with_config(store, test_config())
    }

    pub fn with_config(store: Store, config: ApiConfig) -> TestApi {
        let key: [u8; 32] = rand::random();
        let signer = UrlSigner::new(key.to_vec()).expect("a 32-byte key is a valid signing key");
        TestApi {
            state: AppState {
                store,
                objects: Objects::memory(),
                signer: Arc::new(signer),
                config: Arc::new(config),
                credits: Arc::new(CreditsConfig::default()),
                retention: Arc::default(),
                shop: Arc::new(
                    Shop::new(
                        &PaymentsSettings::default(),
                        "http://127.0.0.1",
                        rand::random::<[u8; 32]>().to_vec(),
                    )
                    .expect("the default payments settings are valid"),
                ),
                seen_ips: Arc::default(),
                streams: Arc::default(),
                codes: Arc::new(CodeKey::random()),
                throttle: Arc::new(LocalThrottle::new()),
                dependencies: Vec::new(),
                webhook_guard: Arc::new(
                    kiln_providers::webhook::WebhookSettings::default().guard(),
                ),
            },
            _db: None,
        }
    }

    /// An API over a migrated store on a scratch SQLite file.
    pub async fn sqlite() -> Result<TestApi, StoreError> {
        TestApi::on(TestDatabase::sqlite()).await
    }

    /// An API over a migrated store on a scratch Postgres database.
    pub async fn postgres() -> Result<TestApi, StoreError> {
        TestApi::on(TestDatabase::postgres().await).await
    }

    /// An API over a migrated store on `db`, which lives as long as it.
    pub async fn on(db: TestDatabase) -> Result<TestApi, StoreError> {
        let mut api = TestApi::new(db.store().await?);
        api._db = Some(db);
        Ok(api)
    }

    /// Prices and grants other than the defaults.
    /// Sells credits as `shop` says (a Paddle fake, other packs).
    pub fn with_shop(mut self, shop: Shop) -> TestApi {
        self.state.shop = Arc::new(shop);
        self
    }

    pub fn with_credits(mut self, credits: CreditsConfig) -> TestApi {
        self.state.credits = Arc::new(credits);
        self
    }

    /// Keeps `db` alive as long as this API (the store it was made from).
    pub fn keeping(mut self, db: TestDatabase) -> TestApi {
        self._db = Some(db);
        self
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The bucket images are served from (in memory).
    pub fn objects(&self) -> &Objects {
        &self.state.objects
    }

    /// The public router over this API's state.
    pub fn router(&self) -> Router {
        crate::router(self.state.clone())
    }

    /// One request through the router: a JSON body when `body` is given,
    /// a bearer token when `token` is.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> TestResponse {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("a valid request")).await
    }

    /// Any request through the router, as built by the caller.
    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        let response = self
            .router()
            .oneshot(req)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the response body");
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// The code the worker would send for the latest code issued to
    /// `address` (an email or E.164 phone, as normalised). In process there
    /// is no worker and no outbox to read it from, so this is a test hook:
    /// it derives the code from the user's stored code row under this API's
    /// key, exactly as `send_email`/`send_sms` do. End-to-end tests read
    /// the dev outbox instead, as a user would.
    pub async fn sent_code(&self, address: &str) -> Option<String> {
        let identifier = if address.starts_with('+') {
            kiln_store::accounts::Identifier::Phone(address.to_owned())
        } else {
            kiln_store::accounts::Identifier::Email(address.to_owned())
        };
        let user = self.store().login_record(&identifier).await.ok()??;
        let latest = self
            .store()
            .codes(user.user_id)
            .await
            .ok()?
            .into_iter()
            .next()?;
        Some(self.state.codes.code(latest.id))
    }

    /// Registers an adult with `email` and `password`, verifies the
    /// address with the code (from [`TestApi::sent_code`]) and signs in:
    /// the bearer token. Panics with the API's answer when a step fails.
    pub async fn signed_up(&self, email: &str, password: &str) -> String {
        let body = serde_json::json!({
            "email": email, "password": password, "birth_date": "1990-01-01",
        });
        let r = self
            .request(Method::POST, "/v1/auth/register", Some(body), None)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "register: {:?}", r.body);
        let code = self.sent_code(email).await.expect("a code was issued");
        let body = serde_json::json!({"email": email, "code": code});
        let r = self
            .request(Method::POST, "/v1/auth/verify", Some(body), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "verify: {:?}", r.body);
        let body = serde_json::json!({"email": email, "password": password});
        let r = self
            .request(Method::POST, "/v1/auth/login", Some(body), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "login: {:?}", r.body);
        r.json()["token"].as_str().expect("a token").to_owned()
    }

    /// Serves the router on 127.0.0.1 at a port the OS picks, until the
    /// returned value is dropped.
    pub async fn serve(&self) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let router = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        TestServer { addr, task }
    }
}

/// An answer from [`TestApi::request`].
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The API served over HTTP by [`TestApi::serve`]; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_real_router_and_store() {
        let api = TestApi::sqlite().await.expect("a scratch store");
        let r = api.request(Method::GET, "/readyz", None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["database"], "sqlite");

        let r = api
            .request(Method::GET, "/v1/jobs", None, Some("nope"))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.content_type(), "application/problem+json");

        let body = serde_json::json!({
            "email": "harness@example.com",
            "password": "correct horse battery",
            "birth_date": "1990-01-01",
        });
        let r = api
            .request(Method::POST, "/v1/auth/register", Some(body), None)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        assert_eq!(r.json(), serde_json::json!({"status": "verification_sent"}));
        let token = api
            .signed_up("kit@example.com", "correct horse battery")
            .await;
        let r = api
            .request(Method::GET, "/v1/jobs", None, Some(&token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

        let server = api.serve().await;
        let answer = tokio::net::TcpStream::connect(server.addr).await;
        assert!(answer.is_ok(), "the served API takes connections");
    }
}
