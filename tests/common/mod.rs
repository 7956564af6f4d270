//! Test harness: start the real `kiln` binary, talk HTTP to it, signal it.
#![allow(dead_code)]

pub mod operators;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use kiln_store::{JobRecord, Store};
use nix::{sys::signal, unistd::Pid};
use uuid::Uuid;

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// A running `kiln` process with its own ports and log file. It listens on
/// port 0 of 127.0.0.1 and `spawn` reads the ports it got from its log;
/// a process that exits before listening has both addresses at port 0.
pub struct Kiln {
    child: Child,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    /// Where the dev mailer and SMS sender write (`email.outbox_dir` and
    /// `sms.outbox_dir`, by default `data/outbox` under the process's
    /// working directory).
    pub outboxes: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

pub struct KilnBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    /// Whether the process makes its own personal-data keys under `data/`
    /// (the embedded default) instead of the tests' shared ones.
    own_keys: bool,
}

pub fn kiln(args: &[&str]) -> KilnBuilder {
    KilnBuilder {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        own_keys: false,
    }
}

impl KilnBuilder {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn database(self, url: &str) -> Self {
        self.env("KILN_DATABASE_URL", url)
    }

    /// Lets the process generate its personal-data keys under `data/`, as
    /// the embedded default does, instead of sharing the tests' keys
    /// (`kiln_store::testing::test_pii`) as every other process does.
    pub fn own_keys(mut self) -> Self {
        self.own_keys = true;
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    pub fn spawn(self) -> Kiln {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("kiln.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(&self.args)
            .current_dir(self.cwd.as_deref().unwrap_or(dir.path()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KILN_HTTP_ADDR", "127.0.0.1:0")
            .env("KILN_METRICS_ADDR", "127.0.0.1:0")
            .env("KILN_LOG_FORMAT", "json")
            .env("KILN_LOG_LEVEL", "info,sqlx=warn")
            // Tests need no brute-force resistance; cost 4 keeps them fast.
            .env("KILN_API_BCRYPT_COST", "4")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if !self.own_keys {
            cmd.env(
                "KILN_ENCRYPTION_KEYS",
                format!("{{k1=\"{}\"}}", kiln_store::testing::TEST_PII_KEY),
            )
            .env(
                "KILN_ENCRYPTION_INDEX_KEY",
                kiln_store::testing::TEST_INDEX_KEY,
            );
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start kiln");
        let cwd = self.cwd.clone().unwrap_or_else(|| dir.path().to_owned());
        let outbox = |var: &str| {
            let set = self.env.iter().rev().find(|(k, _)| k == var);
            cwd.join(set.map_or("data/outbox", |(_, v)| v.as_str()))
        };
        let mut outboxes = vec![
            outbox("KILN_EMAIL_OUTBOX_DIR"),
            outbox("KILN_SMS_OUTBOX_DIR"),
        ];
        outboxes.dedup();
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut kiln = Kiln {
            child,
            http: unbound,
            metrics: unbound,
            log,
            outboxes,
            _dir: dir,
        };
        kiln.read_addresses();
        kiln
    }
}

/// The `addr` of the first JSON log line with this message.
fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != message {
            return None;
        }
        v["addr"].as_str()?.parse().ok()
    })
}

impl Kiln {
    /// Waits until the process has said where it listens (the metrics line
    /// comes last) or has exited. Blocking: it takes the moments between
    /// exec and bind, before the process can do anything a test awaits.
    fn read_addresses(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log_text();
            if let Some(metrics) = logged_addr(&log, "metrics listening") {
                self.metrics = metrics;
                if let Some(http) = logged_addr(&log, "API listening") {
                    self.http = http;
                }
                return;
            }
            if self.child.try_wait().expect("wait kiln").is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kiln never said where it listens; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits until the internal listener answers `/healthz`.
    pub async fn wait_healthy(&self) {
        self.wait_http(self.metrics, "/healthz").await
    }

    pub async fn wait_http(&self, addr: SocketAddr, path: &str) {
        let url = format!("http://{addr}{path}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kiln never answered {url}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://<public addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: signal::Signal) {
        signal::kill(self.pid(), sig).expect("signal kiln");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait kiln") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kiln did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Kiln {
    /// The messages the dev providers wrote to `address` (an email or a
    /// phone number), oldest first: each file's whole text.
    pub fn outbox_messages(&self, address: &str) -> Vec<String> {
        let mut files: Vec<PathBuf> = self
            .outboxes
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        // `email-<uuid v7>` and `sms-<uuid v7>`: by the time in the name.
        files.sort_by_key(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.split_once('-')
                .map(|(_, id)| id.to_owned())
                .unwrap_or_default()
        });
        let to = format!("To: {address}\n");
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter(|text| text.starts_with(&to) || text.contains(&format!("\n{to}")))
            .collect()
    }

    /// Waits for the `n`th message (from 1) to `address` in the outbox.
    pub async fn wait_outbox(&self, address: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self.outbox_messages(address);
            if messages.len() >= n {
                return messages[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "message {n} to {address} never reached the outbox (got {})",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The verification code a message carries: its first run of exactly six
/// digits after the headers.
pub fn code_in(message: &str) -> Option<String> {
    let body = message.split_once("\n\n").map_or(message, |(_, body)| body);
    let mut run = String::new();
    for c in body.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            if run.len() == 6 {
                return Some(run);
            }
            run.clear();
        }
    }
    None
}

/// Where a test reads the codes kiln sends, the way a person would.
#[allow(async_fn_in_trait)]
pub trait Codes {
    /// The public API's root URL.
    fn base(&self) -> String;
    /// The newest verification code sent to `address`, once one has come.
    async fn latest_code(&self, address: &str) -> String;
}

/// A code key for tests whose `serve` and `work` processes are apart and
/// must derive the same codes (`api.code_key`).
pub const SHARED_CODE_KEY: &str =
    "6b696c6e2d746573742d636f64652d6b65792d33322d62797465732d6c6f6e67";

/// A sign-up through one `serve` process whose code another process (a
/// `work`, with the dev mailer) sent.
pub struct Through<'a> {
    pub api: &'a Kiln,
    pub mailer: &'a Kiln,
}

impl Codes for Through<'_> {
    fn base(&self) -> String {
        self.api.url("")
    }

    async fn latest_code(&self, address: &str) -> String {
        self.mailer.latest_code(address).await
    }
}

/// A `kiln` process with the dev providers: codes are read from its outbox.
impl Codes for Kiln {
    fn base(&self) -> String {
        self.url("")
    }

    async fn latest_code(&self, address: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = self
                .outbox_messages(address)
                .iter()
                .rev()
                .find_map(|m| code_in(m))
            {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "no code for {address} reached the outbox; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A `kiln` process whose mail goes to a fake Resend-style API: codes are
/// read from the requests the fake received.
pub struct FakeMail<'a> {
    pub kiln: &'a Kiln,
    pub mail: &'a wiremock::MockServer,
}

impl FakeMail<'_> {
    /// The `text` of every email the fake received for `address`, oldest first.
    pub async fn texts(&self, address: &str) -> Vec<String> {
        self.mail
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter(|b| b["to"] == serde_json::json!([address]))
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Codes for FakeMail<'_> {
    fn base(&self) -> String {
        self.kiln.url("")
    }

    async fn latest_code(&self, address: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = self
                .texts(address)
                .await
                .iter()
                .rev()
                .find_map(|t| code_in(&format!("\n\n{t}")))
            {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "no code for {address} reached the fake mail API"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a job until `done` holds.
pub async fn wait_job(
    store: &Store,
    id: Uuid,
    what: &str,
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = store.get(id).await.expect("read job").expect("job exists");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job never became {what}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP forwarder that can be taken down and brought back, standing in
/// for a database server that goes away.
pub struct Outage {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Outage {
    /// Starts down: nothing listens on `addr` yet.
    pub fn down(target: SocketAddr) -> Outage {
        Outage {
            addr: free_addr(),
            target,
            task: None,
        }
    }

    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind proxy");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every open connection.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A client of the public API, signed in or not.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// Registers an adult with this email, verifies it with the code that
    /// reached `codes` (the outbox, a fake mail API) and signs in.
    pub async fn signed_up(codes: &impl Codes, email: &str) -> Client {
        Client::signed_up_by(codes, "email", email).await
    }

    /// [`Client::signed_up`] by `"email"` or by `"phone"`.
    pub async fn signed_up_by(codes: &impl Codes, field: &str, address: &str) -> Client {
        let mut client = Client::new(&codes.base());
        let password = "correct horse battery";
        let r = client
            .post(
                "/v1/auth/register",
                serde_json::json!({field: address, "password": password, "birth_date": "1990-01-01"}),
            )
            .await;
        assert_eq!(
            r.status(),
            202,
            "register: {}",
            r.text().await.unwrap_or_default()
        );
        let code = codes.latest_code(address).await;
        let r = client
            .post(
                "/v1/auth/verify",
                serde_json::json!({field: address, "code": code}),
            )
            .await;
        assert_eq!(
            r.status(),
            200,
            "verify: {}",
            r.text().await.unwrap_or_default()
        );
        let r = client
            .post(
                "/v1/auth/login",
                serde_json::json!({field: address, "password": password}),
            )
            .await;
        assert_eq!(r.status(), 200, "login");
        let session: serde_json::Value = r.json().await.expect("login body");
        client.token = Some(session["token"].as_str().expect("token").to_owned());
        client
    }

    /// Posts a job that must be accepted (202); its id.
    pub async fn accepted(&self, path: &str, body: serde_json::Value) -> String {
        let r = self.post(path, body).await;
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("JSON answer");
        assert_eq!(status, 202, "{path}: {body}");
        body["id"].as_str().expect("the job's id").to_owned()
    }

    /// Long-polls a job until it is final.
    pub async fn wait_final(&self, job_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.get(&format!("/v1/jobs/{job_id}?wait=10")).await;
            assert_eq!(r.status(), 200);
            let job: serde_json::Value = r.json().await.expect("job body");
            if matches!(
                job["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(Instant::now() < deadline, "job never finished: {job}");
        }
    }
}

/// A real PNG of one shade, as an image provider's answer would carry.
pub fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(std::io::Cursor::new(&mut out), width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().expect("PNG header");
    writer
        .write_image_data(&vec![shade; (width * height * 3) as usize])
        .expect("PNG data");
    writer.finish().expect("PNG end");
    out
}

/// Asserts a problem+json answer with this status and code.
pub async fn assert_problem(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = r.json().await.expect("problem body");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// A fake S3 bucket (path style): keeps what is PUT and serves it on GET;
/// [`FakeBucket::fail`] makes it answer every request 503 SlowDown.
#[derive(Clone, Default)]
pub struct FakeBucket {
    objects: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeBucket {
    pub fn fail(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }

    /// The object at `path` (`/<bucket>/<key>`), if one was stored.
    pub fn object(&self, path: &str) -> Option<Vec<u8>> {
        self.objects.lock().unwrap().get(path).cloned()
    }
}

impl wiremock::Respond for FakeBucket {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        use wiremock::ResponseTemplate;
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return ResponseTemplate::new(503)
                .set_body_string("<Error><Code>SlowDown</Code></Error>");
        }
        let key = request.url.path().to_owned();
        let mut objects = self.objects.lock().unwrap();
        match request.method.as_str() {
            "PUT" => {
                objects.insert(key, request.body.clone());
                ResponseTemplate::new(200).insert_header("etag", "\"1\"")
            }
            "GET" | "HEAD" => match objects.get(&key) {
                Some(body) => ResponseTemplate::new(200)
                    .insert_header("etag", "\"1\"")
                    .insert_header("last-modified", "Wed, 25 Nov 2026 12:00:00 GMT")
                    .set_body_bytes(body.clone()),
                None => ResponseTemplate::new(404)
                    .set_body_string("<Error><Code>NoSuchKey</Code></Error>"),
            },
            "DELETE" => {
                objects.remove(&key);
                ResponseTemplate::new(204)
            }
            _ => ResponseTemplate::new(405),
        }
    }
}
