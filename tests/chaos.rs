//! The chaos run: accounts enqueue mixed work (generations, some with a
//! follow-up upscale or a webhook, data exports, operator notices by email
//! and SMS) through two `kiln serve` processes, while three `kiln work` and
//! two `kiln schedule` processes run it on Postgres and a controller, one
//! fault at a time, SIGKILLs and restarts workers and schedulers, SIGSTOPs
//! a worker past its lease, makes the fake providers answer 429, 503 or
//! too late, drops their connections, restarts Redis and takes Postgres
//! away. Afterwards every job is in exactly one terminal state, each side
//! effect happened once as the fakes saw it (or, where the provider cannot
//! deduplicate, no more often than the job's history has attempts), every
//! account's ledger balances, and no table or log holds a plain email
//! address or phone number. It prints one summary line.
//!
//! Short form (CI) by default; `KILN_CHAOS_LONG=1` runs the long form (200
//! accounts, about 10,000 jobs); `KILN_CHAOS_SEED` repeats a run's faults.
//!
//! Postgres is the machine's own server, stopped (`pg_ctlcluster … stop
//! -m fast`) and started again, always: the run must not share it with
//! other tests meanwhile, and `cargo test` runs one test binary at a time
//! (this one holds one test). Redis is a private `redis-server`, killed and
//! started again for real.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use common::{Client, Codes, Kiln, KilnBuilder, Outage, free_addr, kiln};
use kiln_store::testing::TestDatabase;
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Size {
    accounts: usize,
    generations: usize,
    notices: usize,
    /// Rounds of faults: each round is every kind once, in a random order.
    rounds: usize,
    /// Between two requests of one account, in ms: the load spans the
    /// faults rather than finishing before them.
    pause: (u64, u64),
    drain: Duration,
}

impl Size {
    fn from_env() -> Size {
        if std::env::var("KILN_CHAOS_LONG").is_ok_and(|v| v == "1") {
            Size {
                accounts: 200,
                generations: 36,
                notices: 3,
                rounds: 4,
                pause: (4000, 9000),
                drain: Duration::from_secs(600),
            }
        } else {
            Size {
                accounts: 24,
                generations: 10,
                notices: 2,
                rounds: 1,
                pause: (3000, 8000),
                drain: Duration::from_secs(180),
            }
        }
    }
}

/// The lease every worker holds its jobs by; a SIGSTOP outlasts it.
const LEASE_MS: u64 = 3000;
/// Every provider request's timeout; a "late" fake answers after it.
const PROVIDER_TIMEOUT_MS: u64 = 1500;
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// Phone numbers are `+49155100` and a serial: the run looks for this run
/// of digits in every table and log.
const PHONE_PREFIX: &str = "49155100";

// ---------------------------------------------------------------- fakes

/// What a provider fault window does to (about half of) the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderFault {
    Throttle,
    Unavailable,
    Late,
}

/// What the fakes saw, as a provider would have.
#[derive(Default)]
struct Seen {
    /// Image generation requests, by prompt.
    generations: HashMap<String, u32>,
    /// Generation requests whose prompt was not readable.
    unreadable_generations: u32,
    upscale_submits: u32,
    /// Mails sent, by idempotency key: (to, subject, text).
    emails: HashMap<String, (String, String, String)>,
    /// Mails the fake did not send again because their key was known.
    emails_deduplicated: u32,
    /// Mails without a key: nothing could deduplicate them.
    emails_unkeyed: u32,
    /// Texts sent: (to, body).
    sms: Vec<(String, String)>,
    /// Webhook deliveries by `webhook-id`: the status answered each time.
    hooks: HashMap<String, Vec<u16>>,
}

/// Every provider kiln calls, in its wire format, on one server: OpenAI
/// images and moderation, fal's queue, a Resend-style mail API that
/// honours `Idempotency-Key`, Twilio, and the clients' webhook receiver.
#[derive(Clone)]
struct Fakes {
    seen: Arc<Mutex<Seen>>,
    fault: Arc<Mutex<Option<ProviderFault>>>,
    /// Where kiln reaches the fakes (through the forwarder that drops
    /// connections): fal's answers carry absolute URLs.
    base: Arc<Mutex<String>>,
    image: Arc<Vec<u8>>,
    upscaled: Arc<Vec<u8>>,
}

impl Fakes {
    fn new() -> Fakes {
        Fakes {
            seen: Arc::default(),
            fault: Arc::default(),
            base: Arc::default(),
            image: Arc::new(common::png(16, 16, 90)),
            upscaled: Arc::new(common::png(32, 32, 180)),
        }
    }

    fn set_fault(&self, fault: Option<ProviderFault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// The fault this request meets, if a window is open: about half of
    /// the requests in it do.
    fn fault_now(&self) -> Option<ProviderFault> {
        let fault = *self.fault.lock().unwrap();
        fault.filter(|_| rand::random::<bool>())
    }

    /// The verification code last sent to `address`, by mail or text.
    fn code_for(&self, address: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let mails = seen
            .emails
            .values()
            .filter(|(to, _, _)| to == address)
            .map(|(_, _, text)| text.clone());
        let texts = seen
            .sms
            .iter()
            .filter(|(to, _)| to == address)
            .map(|(_, body)| body.clone());
        mails
            .chain(texts)
            .filter_map(|t| common::code_in(&format!("\n\n{t}")))
            .last()
    }
}

impl Respond for Fakes {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_owned();
        let method = request.method.as_str();
        let fault = self.fault_now();
        // Throttled and unavailable requests do nothing; a late one does
        // its work and answers after the caller gave up.
        match fault {
            Some(ProviderFault::Throttle) => return throttled(&path),
            Some(ProviderFault::Unavailable) => return unavailable(&path),
            _ => {}
        }
        let answer = self.serve(method, &path, request);
        if fault == Some(ProviderFault::Late) {
            answer.set_delay(Duration::from_millis(PROVIDER_TIMEOUT_MS * 2))
        } else {
            answer
        }
    }
}

impl Fakes {
    fn serve(&self, method: &str, path: &str, request: &Request) -> ResponseTemplate {
        let json_body = || serde_json::from_slice::<Value>(&request.body).unwrap_or(Value::Null);
        let mut seen = self.seen.lock().unwrap();
        match (method, path) {
            ("POST", "/v1/images/generations") => {
                match json_body()["prompt"].as_str() {
                    Some(prompt) => *seen.generations.entry(prompt.to_owned()).or_default() += 1,
                    None => seen.unreadable_generations += 1,
                }
                ResponseTemplate::new(200).set_body_json(json!({
                    "created": 1_700_000_000,
                    "data": [{"b64_json": BASE64.encode(self.image.as_slice())}],
                }))
            }
            ("POST", "/v1/moderations") => ResponseTemplate::new(200).set_body_json(json!({
                "id": "modr-1", "model": "omni-moderation-latest",
                "results": [{"flagged": false, "categories": {"violence": false},
                             "category_scores": {"violence": 0.01}}],
            })),
            ("POST", "/fal-ai/esrgan") => {
                seen.upscale_submits += 1;
                let n = seen.upscale_submits;
                let base = self.base.lock().unwrap().clone();
                let at = format!("{base}/fal-ai/esrgan/requests/req-{n}");
                ResponseTemplate::new(200).set_body_json(json!({
                    "request_id": format!("req-{n}"), "status": "IN_QUEUE", "queue_position": 0,
                    "status_url": format!("{at}/status"), "response_url": at,
                    "cancel_url": format!("{at}/cancel"),
                }))
            }
            ("GET", p) if p.starts_with("/fal-ai/esrgan/requests/") && p.ends_with("/status") => {
                ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETED"}))
            }
            ("GET", p) if p.starts_with("/fal-ai/esrgan/requests/") => {
                let base = self.base.lock().unwrap().clone();
                ResponseTemplate::new(200).set_body_json(json!({"image": {
                    "url": format!("{base}/files/upscaled.png"),
                    "width": 32, "height": 32, "content_type": "image/png"}}))
            }
            ("PUT", p) if p.ends_with("/cancel") => ResponseTemplate::new(202)
                .set_body_json(json!({"status": "CANCELLATION_REQUESTED"})),
            ("GET", "/files/upscaled.png") => ResponseTemplate::new(200)
                .insert_header("content-type", "image/png")
                .set_body_bytes(self.upscaled.as_slice()),
            ("POST", "/emails") => {
                let body = json_body();
                let mail = (
                    body["to"][0].as_str().unwrap_or_default().to_owned(),
                    body["subject"].as_str().unwrap_or_default().to_owned(),
                    body["text"].as_str().unwrap_or_default().to_owned(),
                );
                let key = request
                    .headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let id = match key {
                    Some(key) if seen.emails.contains_key(&key) => {
                        seen.emails_deduplicated += 1;
                        key
                    }
                    Some(key) => {
                        seen.emails.insert(key.clone(), mail);
                        key
                    }
                    None => {
                        seen.emails_unkeyed += 1;
                        let key = format!("unkeyed-{}", seen.emails_unkeyed);
                        seen.emails.insert(key.clone(), mail);
                        key
                    }
                };
                ResponseTemplate::new(200).set_body_json(json!({"id": id}))
            }
            ("POST", p) if p.ends_with("/Messages.json") => {
                let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
                    .into_owned()
                    .collect();
                let to = form.get("To").cloned().unwrap_or_default();
                let body = form.get("Body").cloned().unwrap_or_default();
                seen.sms.push((to, body));
                let sid = format!("SM{:032x}", seen.sms.len());
                ResponseTemplate::new(201).set_body_json(json!({"sid": sid, "status": "queued"}))
            }
            ("POST", "/hooks") => {
                let id = request
                    .headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.hooks.entry(id).or_default().push(200);
                ResponseTemplate::new(200)
            }
            _ => ResponseTemplate::new(404),
        }
    }
}

/// A 429 as each provider words it (no side effect happened).
fn throttled(path: &str) -> ResponseTemplate {
    let body = if path.ends_with("/Messages.json") {
        json!({"code": 20429, "message": "Too Many Requests", "more_info": "", "status": 429})
    } else if path == "/emails" {
        json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"})
    } else {
        json!({"error": {"message": "Rate limit reached", "type": "requests",
                         "param": null, "code": "rate_limit_exceeded"}})
    };
    ResponseTemplate::new(429)
        .insert_header("retry-after", "1")
        .set_body_json(body)
}

fn unavailable(path: &str) -> ResponseTemplate {
    if path.ends_with("/Messages.json") {
        return ResponseTemplate::new(503).set_body_json(
            json!({"code": 20503, "message": "Service Unavailable", "more_info": "", "status": 503}),
        );
    }
    ResponseTemplate::new(503).set_body_string("upstream unavailable")
}

/// Codes for sign-ups come from what the fake mail API and Twilio got.
struct FakeInbox<'a> {
    base: String,
    fakes: &'a Fakes,
}

impl Codes for FakeInbox<'_> {
    fn base(&self) -> String {
        self.base.clone()
    }

    async fn latest_code(&self, address: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = self.fakes.code_for(address) {
                return code;
            }
            assert!(Instant::now() < deadline, "no code reached {address}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ------------------------------------------------------------ processes

/// A `redis-server` of the run's own, so restarting it touches no other test.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let mut redis = Redis { port, child: None };
        redis.up();
        redis
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The machine's Postgres cluster, stopped and started for real
/// (`pg_ctlcluster`, as the machine's services are run). Stopped, it is
/// started again when this is dropped, even by a failing run.
struct PostgresServer {
    version: String,
    stopped: bool,
}

impl PostgresServer {
    fn new() -> PostgresServer {
        let version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|mut dirs| dirs.next())
            .and_then(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .expect("the chaos run stops the machine's Postgres: no cluster under /etc/postgresql");
        PostgresServer {
            version,
            stopped: false,
        }
    }

    fn ctl(&self, action: &[&str]) {
        let out = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main"])
            .args(action)
            .output()
            .expect("run pg_ctlcluster");
        assert!(
            out.status.success(),
            "pg_ctlcluster {action:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fast shutdown: every session is ended, as an operator's restart
    /// or a failover does.
    fn stop(&mut self) {
        self.stopped = true;
        self.ctl(&["stop", "--", "-m", "fast"]);
    }

    fn start(&mut self) {
        self.ctl(&["start"]);
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "Postgres did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.stopped {
            self.start();
        }
    }
}

/// The processes of the run, by role, and every process that was killed
/// (kept for its log).
struct Fleet {
    settings: Vec<(String, String)>,
    serves: Vec<Kiln>,
    workers: Vec<Kiln>,
    schedulers: Vec<Kiln>,
    dead: Vec<Kiln>,
}

impl Fleet {
    fn builder(&self, role: &str) -> KilnBuilder {
        self.settings
            .iter()
            .fold(kiln(&[role]), |b, (k, v)| b.env(k, v))
    }

    /// Starts a process; blocking while it binds, like [`KilnBuilder::spawn`].
    async fn start(&self, role: &str) -> Kiln {
        let builder = self.builder(role);
        let process = tokio::task::block_in_place(|| builder.spawn());
        process.wait_healthy().await;
        process
    }

    /// The running processes of `role`.
    fn group(&mut self, role: &str) -> &mut Vec<Kiln> {
        match role {
            "serve" => &mut self.serves,
            "work" => &mut self.workers,
            _ => &mut self.schedulers,
        }
    }

    fn logs(&self) -> Vec<String> {
        self.serves
            .iter()
            .chain(&self.workers)
            .chain(&self.schedulers)
            .chain(&self.dead)
            .map(Kiln::log_text)
            .collect()
    }
}

// ----------------------------------------------------------------- load

/// Posts until kiln takes it: the same `Idempotency-Key` every time, as a
/// careful client does through an outage. The job's id.
async fn post_until_taken(client: &Client, path: &str, key: &str, body: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let sent = client
            .request(reqwest::Method::POST, path)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap();
                return v["id"].as_str().unwrap().to_owned();
            }
            Ok(r) if matches!(r.status().as_u16(), 429 | 502 | 503 | 504) => {}
            Ok(r) => panic!(
                "{path} answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(_) => {} // the connection went: try again
        }
        assert!(Instant::now() < deadline, "{path} never took {key}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One account of the run.
#[derive(Clone)]
struct Account {
    client: Client,
    user_id: String,
    /// The email address or phone number it signed up with.
    address: String,
}

/// What the load put in, by job id.
#[derive(Default)]
struct Accepted {
    /// Generation job -> its prompt.
    generations: HashMap<String, String>,
    with_upscale: HashSet<String>,
    with_webhook: HashSet<String>,
    exports: HashSet<String>,
    notices: HashSet<String>,
}

async fn account_load(
    n: usize,
    account: Account,
    size: Size,
    hooks: String,
    accepted: Arc<Mutex<Accepted>>,
) {
    let mut rng = StdRng::seed_from_u64(n as u64);
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..size.pause.1))).await;
    for i in 0..size.generations {
        let prompt = format!("chaos study {n}-{i}");
        let mut body = json!({"prompt": prompt, "size": "256x256"});
        match i % 3 {
            1 => body["then"] = json!({"upscale": {"scale": 2}}),
            2 => body["webhook_url"] = json!(hooks),
            _ => {}
        }
        let id = post_until_taken(
            &account.client,
            "/v1/generations",
            &format!("gen-{n}-{i}"),
            &body,
        )
        .await;
        {
            let mut taken = accepted.lock().unwrap();
            match i % 3 {
                1 => taken.with_upscale.insert(id.clone()),
                2 => taken.with_webhook.insert(id.clone()),
                _ => false,
            };
            taken.generations.insert(id, prompt);
        }
        if i == size.generations / 2 {
            let id = post_until_taken(
                &account.client,
                "/v1/me/exports",
                &format!("export-{n}"),
                &json!({}),
            )
            .await;
            accepted.lock().unwrap().exports.insert(id);
        }
        tokio::time::sleep(Duration::from_millis(
            rng.random_range(size.pause.0..size.pause.1),
        ))
        .await;
    }
}

// ----------------------------------------------------------- controller

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    KillScheduler,
    StopWorkerPastLease,
    Provider429,
    Provider503,
    ProviderTimeout,
    DroppedConnections,
    RedisRestart,
    PostgresDown,
}

const FAULTS: [Fault; 9] = [
    Fault::KillWorker,
    Fault::KillScheduler,
    Fault::StopWorkerPastLease,
    Fault::Provider429,
    Fault::Provider503,
    Fault::ProviderTimeout,
    Fault::DroppedConnections,
    Fault::RedisRestart,
    Fault::PostgresDown,
];

struct Chaos<'a> {
    fleet: &'a mut Fleet,
    fakes: &'a Fakes,
    providers: &'a mut Outage,
    postgres: &'a mut PostgresServer,
    redis: &'a mut Redis,
    rng: StdRng,
}

impl Chaos<'_> {
    /// SIGKILLs one process of `role` (`work` or `schedule`), keeps it for
    /// its log, and starts a new one after `pause`.
    async fn kill_and_replace(&mut self, role: &str, pause: Duration) {
        let group = self.fleet.group(role);
        let i = self.rng.random_range(0..group.len());
        let mut victim = group.remove(i);
        victim.signal(Signal::SIGKILL);
        victim.wait_exit(Duration::from_secs(10)).await;
        self.fleet.dead.push(victim);
        tokio::time::sleep(pause).await;
        let fresh = self.fleet.start(role).await;
        self.fleet.group(role).push(fresh);
    }

    /// Brings the fault about, holds it, and ends it.
    async fn inflict(&mut self, fault: Fault) {
        let hold = Duration::from_millis(self.rng.random_range(1000..3000));
        match fault {
            Fault::KillWorker => self.kill_and_replace("work", hold).await,
            Fault::KillScheduler => self.kill_and_replace("schedule", hold).await,
            Fault::StopWorkerPastLease => {
                let i = self.rng.random_range(0..self.fleet.workers.len());
                let frozen = &self.fleet.workers[i];
                frozen.signal(Signal::SIGSTOP);
                // Past the lease and a rescue pass: its jobs go to others.
                tokio::time::sleep(Duration::from_millis(LEASE_MS * 2) + hold).await;
                frozen.signal(Signal::SIGCONT);
            }
            Fault::Provider429 | Fault::Provider503 | Fault::ProviderTimeout => {
                self.fakes.set_fault(Some(match fault {
                    Fault::Provider429 => ProviderFault::Throttle,
                    Fault::Provider503 => ProviderFault::Unavailable,
                    _ => ProviderFault::Late,
                }));
                tokio::time::sleep(hold).await;
                self.fakes.set_fault(None);
            }
            Fault::DroppedConnections => {
                self.providers.cut();
                tokio::time::sleep(hold).await;
                self.providers.up().await;
            }
            Fault::RedisRestart => {
                self.redis.kill();
                tokio::time::sleep(hold).await;
                tokio::task::block_in_place(|| self.redis.up());
            }
            Fault::PostgresDown => {
                tokio::task::block_in_place(|| self.postgres.stop());
                tokio::time::sleep(hold + Duration::from_secs(2)).await;
                tokio::task::block_in_place(|| self.postgres.start());
            }
        }
    }
}

/// How soon after a fault's end the work went on.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    /// Until some job finished again.
    resumed: Duration,
    /// Until a generation enqueued then had succeeded: the whole path (the
    /// API, the queue behind any backlog, a worker, the providers, storage).
    new_job: Duration,
}

async fn recovery(probe: &Client, pool: &sqlx::PgPool, key: &str) -> Recovery {
    let since = chrono::Utc::now();
    let started = Instant::now();
    let resumed = async {
        loop {
            let done: Result<(bool,), _> = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM finished_jobs WHERE finished_at > $1)",
            )
            .bind(since)
            .fetch_one(pool)
            .await;
            if let Ok((true,)) = done {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let new_job = async {
        let id = post_until_taken(
            probe,
            "/v1/generations",
            key,
            &json!({"prompt": format!("recovery probe {key}"), "size": "256x256"}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            // Through the tail of an outage a poll may still meet a 503.
            if let Ok(r) = probe
                .request(reqwest::Method::GET, &format!("/v1/jobs/{id}?wait=10"))
                .send()
                .await
                && r.status() == 200
            {
                let job: Value = r.json().await.unwrap();
                match job["state"].as_str() {
                    Some("succeeded") => return started.elapsed(),
                    Some("failed" | "cancelled") => panic!("recovery probe: {job}"),
                    _ => {}
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(Instant::now() < deadline, "no recovery after {key}");
        }
    };
    let (resumed, new_job) = tokio::join!(resumed, new_job);
    Recovery { resumed, new_job }
}

// ----------------------------------------------------------------- run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_loses_and_duplicates_nothing() {
    let size = Size::from_env();
    let seed: u64 = std::env::var("KILN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let started = Instant::now();
    let db = TestDatabase::postgres().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();

    let fakes = Fakes::new();
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(fakes.clone())
        .mount(&server)
        .await;
    let mut providers = Outage::down(*server.address());
    providers.up().await;
    *fakes.base.lock().unwrap() = format!("http://{}", providers.addr);
    let mut postgres = PostgresServer::new();
    let redis_port = free_addr().port();
    let mut redis = Redis::start(redis_port);
    let storage = tempfile::tempdir().unwrap();

    let base = format!("http://{}", providers.addr);
    let timeout = PROVIDER_TIMEOUT_MS.to_string();
    let settings: Vec<(&str, String)> = vec![
        ("KILN_DATABASE_URL", db.url.clone()),
        ("KILN_DATABASE_MAX_CONNECTIONS", "6".into()),
        (
            "KILN_RATE_LIMITS_REDIS_URL",
            format!("redis://127.0.0.1:{redis_port}"),
        ),
        (
            "KILN_RATE_LIMITS_PROVIDERS",
            "{images={requests_per_second=500,max_concurrent=24}}".into(),
        ),
        (
            "KILN_STORAGE_ROOT",
            storage.path().join("objects").display().to_string(),
        ),
        ("KILN_STORAGE_SIGNING_KEY", "ab".repeat(32)),
        (
            "KILN_STORAGE_PUBLIC_BASE_URL",
            "https://kiln.example".into(),
        ),
        ("KILN_API_CODE_KEY", common::SHARED_CODE_KEY.into()),
        // What each account's generations and upscales cost, and a spare.
        (
            "KILN_CREDITS_SIGNUP_GRANT",
            (size.generations * 2 + 10).to_string(),
        ),
        ("KILN_IMAGES_PROVIDER", "openai".into()),
        ("KILN_IMAGES_BASE_URL", base.clone()),
        ("KILN_IMAGES_API_KEY", "sk-chaos".into()),
        ("KILN_IMAGES_TIMEOUT_MS", timeout.clone()),
        ("KILN_MODERATION_PROVIDER", "openai".into()),
        ("KILN_MODERATION_BASE_URL", base.clone()),
        ("KILN_MODERATION_API_KEY", "sk-chaos".into()),
        ("KILN_MODERATION_TIMEOUT_MS", timeout.clone()),
        ("KILN_UPSCALE_PROVIDER", "fal".into()),
        ("KILN_UPSCALE_QUEUE_BASE_URL", base.clone()),
        ("KILN_UPSCALE_API_KEY", "fal-chaos".into()),
        ("KILN_UPSCALE_POLL_INTERVAL_MS", "50".into()),
        ("KILN_UPSCALE_TIMEOUT_MS", timeout.clone()),
        ("KILN_EMAIL_PROVIDER", "http".into()),
        ("KILN_EMAIL_HTTP_BASE_URL", base.clone()),
        ("KILN_EMAIL_HTTP_API_KEY", "re_chaos".into()),
        ("KILN_EMAIL_FROM", "noreply@kiln.example".into()),
        ("KILN_EMAIL_TIMEOUT_MS", timeout.clone()),
        ("KILN_SMS_PROVIDER", "twilio".into()),
        ("KILN_SMS_BASE_URL", base.clone()),
        ("KILN_SMS_ACCOUNT_SID", TWILIO_SID.into()),
        ("KILN_SMS_AUTH_TOKEN", "twilio-chaos".into()),
        ("KILN_SMS_FROM", "+15005550006".into()),
        ("KILN_SMS_TIMEOUT_MS", timeout.clone()),
        ("KILN_WEBHOOKS_ALLOW_HTTP", "true".into()),
        ("KILN_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true".into()),
        ("KILN_WEBHOOKS_TIMEOUT_MS", timeout.clone()),
        ("KILN_WORKER_LEASE_MS", LEASE_MS.to_string()),
        ("KILN_WORKER_MAINTENANCE_INTERVAL_MS", "500".into()),
        ("KILN_WORKER_POLL_INTERVAL_MS", "250".into()),
        // Every five seconds, so slots fire while schedulers die.
        (
            "KILN_SCHEDULER_RETENTION_PURGE_CRON",
            "*/5 * * * * *".into(),
        ),
    ];
    let mut fleet = Fleet {
        settings: settings
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        serves: Vec::new(),
        workers: Vec::new(),
        schedulers: Vec::new(),
        dead: Vec::new(),
    };
    // The first process migrates; the rest start on a migrated database.
    let first = fleet.start("serve").await;
    fleet.serves.push(first);
    let second = fleet.start("serve").await;
    fleet.serves.push(second);
    for _ in 0..3 {
        let worker = fleet.start("work").await;
        fleet.workers.push(worker);
    }
    for _ in 0..2 {
        let scheduler = fleet.start("schedule").await;
        fleet.schedulers.push(scheduler);
    }

    // Accounts, by email and (every fifth) by phone, half on each serve;
    // the first is an operator.
    let bases: Vec<String> = fleet.serves.iter().map(|s| s.url("")).collect();
    let mut accounts = Vec::new();
    for n in 0..size.accounts {
        let inbox = FakeInbox {
            base: bases[n % 2].clone(),
            fakes: &fakes,
        };
        let (field, address) = if n % 5 == 4 {
            ("phone", format!("+{PHONE_PREFIX}{n:04}"))
        } else {
            ("email", format!("chaos.person.{n}@example.com"))
        };
        let client = Client::signed_up_by(&inbox, field, &address).await;
        let me: Value = client.get("/v1/me").await.json().await.unwrap();
        let r = client.post("/v1/me/webhook-secret", json!({})).await;
        assert_eq!(r.status(), 201);
        accounts.push(Account {
            client,
            user_id: me["id"].as_str().unwrap().to_owned(),
            address,
        });
    }
    let operator = accounts[0].clone();
    let store = db.store().await.unwrap();
    store
        .set_operator(
            &kiln_store::accounts::Identifier::Email(operator.address.clone()),
            true,
        )
        .await
        .unwrap();
    store
        .grant_credits(
            kiln_jobs::UserId(operator.user_id.parse().unwrap()),
            1000,
            "recovery probes",
        )
        .await
        .unwrap();

    // The load, and the operator's notices now and then.
    let accepted: Arc<Mutex<Accepted>> = Arc::default();
    let hooks = format!("http://{}/hooks", providers.addr);
    let mut load = tokio::task::JoinSet::new();
    for (n, account) in accounts.iter().enumerate() {
        load.spawn(account_load(
            n,
            account.clone(),
            size,
            hooks.clone(),
            accepted.clone(),
        ));
    }
    {
        let (operator, accepted) = (operator.client.clone(), accepted.clone());
        load.spawn(async move {
            for i in 0..size.notices {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let text = json!({"en": format!("Security notice {i}")});
                let id = post_until_taken(
                    &operator,
                    "/admin/v1/notices/security",
                    &format!("notice-{i}"),
                    &json!({"subject": text, "body": text, "all": true}),
                )
                .await;
                accepted.lock().unwrap().notices.insert(id);
            }
        });
    }

    // Faults, one at a time, each kind once a round, in a random order.
    let mut chaos = Chaos {
        fleet: &mut fleet,
        fakes: &fakes,
        providers: &mut providers,
        postgres: &mut postgres,
        redis: &mut redis,
        rng: StdRng::seed_from_u64(seed),
    };
    let mut recoveries: BTreeMap<Fault, Vec<Recovery>> = BTreeMap::new();
    let mut round = 0;
    while round < size.rounds || !load.is_empty() {
        let mut kinds = FAULTS.to_vec();
        kinds.shuffle(&mut chaos.rng);
        for fault in kinds {
            chaos.inflict(fault).await;
            let took = recovery(&operator.client, &pool, &format!("probe-{round}-{fault:?}")).await;
            recoveries.entry(fault).or_default().push(took);
            while let Some(done) = load.try_join_next() {
                done.unwrap();
            }
            let pause = chaos.rng.random_range(200..800);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        round += 1;
    }
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }

    // Schedulers stop; everything queued drains.
    for scheduler in &fleet.schedulers {
        scheduler.signal(Signal::SIGTERM);
    }
    for scheduler in &mut fleet.schedulers {
        scheduler.wait_exit(Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + size.drain;
    loop {
        let left: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state ORDER BY kind, state",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs never finished (seed {seed}): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let accepted = Arc::try_unwrap(accepted)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let seen = std::mem::take(&mut *fakes.seen.lock().unwrap());
    let report = check(&pool, &accepted, &seen, &accounts, size, seed).await;
    check_no_plain_contacts(&pool, &fleet.logs(), &accounts).await;

    let faults: Vec<String> = recoveries
        .iter()
        .map(|(kind, times)| {
            let resumed = times.iter().map(|r| r.resumed).max().unwrap();
            let new_job = times.iter().map(|r| r.new_job).max().unwrap();
            format!(
                "{kind:?} {} (resumed <= {} ms, new job <= {} ms)",
                times.len(),
                resumed.as_millis(),
                new_job.as_millis()
            )
        })
        .collect();
    let spread = |pick: fn(&Recovery) -> Duration| {
        let mut all: Vec<Duration> = recoveries.values().flatten().map(pick).collect();
        all.sort();
        format!(
            "p50 {} ms, max {} ms",
            all[all.len() / 2].as_millis(),
            all.last().unwrap().as_millis()
        )
    };
    println!(
        "chaos: seed {seed}, {} accounts, {} jobs ({}), {} s; faults: {}; resumed {}; new job done {}; lost = {}, duplicated = {}; {}",
        size.accounts,
        report.jobs,
        report.by_kind,
        started.elapsed().as_secs(),
        faults.join(", "),
        spread(|r| r.resumed),
        spread(|r| r.new_job),
        report.lost,
        report.duplicated,
        report.repeats,
    );
}

/// The invariants' figures for the summary.
struct Report {
    jobs: usize,
    /// Accepted jobs that never finished (each check asserts 0).
    lost: usize,
    /// Jobs finished twice, and mails sent twice.
    duplicated: usize,
    by_kind: String,
    repeats: String,
}

async fn check(
    pool: &sqlx::PgPool,
    accepted: &Accepted,
    seen: &Seen,
    accounts: &[Account],
    size: Size,
    seed: u64,
) -> Report {
    // Every job once, and finished.
    let finished: Vec<(uuid::Uuid, String, String, i32, Option<String>, Value)> = sqlx::query_as(
        "SELECT id, kind, state, attempt,
                (SELECT string_agg(e ->> 'code', ' ') FROM jsonb_array_elements(errors) e),
                payload
         FROM finished_jobs",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut by_id: HashMap<String, (&str, &str, i32)> = HashMap::new();
    let mut finished_twice = 0;
    for (id, kind, state, attempt, _, _) in &finished {
        if by_id
            .insert(id.to_string(), (kind, state, *attempt))
            .is_some()
        {
            finished_twice += 1;
        }
    }
    assert_eq!(finished_twice, 0, "jobs finished twice (seed {seed})");
    let mut outcomes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (_, kind, state, attempt, codes, _) in &finished {
        *outcomes.entry((kind, state)).or_default() += 1;
        if state != "succeeded" {
            eprintln!("{kind} ended {state} after {attempt} attempts: {codes:?}");
        }
    }
    let lost: Vec<&String> = accepted
        .generations
        .keys()
        .chain(&accepted.exports)
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "accepted jobs lost (seed {seed}): {lost:?}"
    );
    // Each notice fanned out by one job; each export is on record as the
    // data-subject request it answers.
    assert_eq!(accepted.notices.len(), size.notices);
    assert_eq!(
        outcomes.get(&("notify_users", "succeeded")),
        Some(&size.notices)
    );
    let (requests,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM subject_requests WHERE kind = 'export'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        requests as usize,
        accepted.exports.len(),
        "exports on record"
    );

    // Generations: the provider was asked no more often than the history
    // has attempts; each success asked at least once.
    assert_eq!(seen.unreadable_generations, 0);
    let mut generation_repeats = 0;
    for (id, prompt) in &accepted.generations {
        let (_, state, attempt) = by_id[id];
        let asked = seen.generations.get(prompt).copied().unwrap_or(0);
        assert!(
            asked as i32 <= attempt,
            "{prompt}: asked {asked} times in {attempt} attempts"
        );
        assert!(
            state != "succeeded" || asked >= 1,
            "{prompt} succeeded unasked"
        );
        generation_repeats += asked.saturating_sub(1);
    }
    // Follow-ups: one upscale per generation that asked for one and
    // succeeded; fal was asked no more often than they have attempts.
    let children: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT parent_id, count(*) FROM finished_jobs WHERE parent_id IS NOT NULL GROUP BY parent_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let children: HashMap<String, i64> = children
        .into_iter()
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    for id in &accepted.with_upscale {
        let want = i64::from(by_id[id].1 == "succeeded");
        assert_eq!(
            children.get(id).copied().unwrap_or(0),
            want,
            "follow-ups of {id}"
        );
    }
    let upscale_attempts: i32 = finished
        .iter()
        .filter(|f| f.1 == "upscale_image")
        .map(|f| f.3)
        .sum();
    assert!(seen.upscale_submits as i32 <= upscale_attempts);

    // Mail: every send carried its job's key; each sent notice reached
    // its recipient once.
    assert_eq!(seen.emails_unkeyed, 0, "mail without an idempotency key");
    for (id, kind, state, _, _, _) in &finished {
        if kind == "send_email" && state == "succeeded" {
            assert!(
                seen.emails.contains_key(&id.to_string()),
                "mail {id} never sent"
            );
        }
    }
    let mut letters: HashMap<(&str, &str), usize> = HashMap::new();
    for (to, subject, _) in seen.emails.values() {
        *letters.entry((to, subject)).or_default() += 1;
    }
    let twice: Vec<_> = letters.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "the same mail sent twice: {twice:?}");

    // Texts: Twilio cannot deduplicate, so a text may repeat only for an
    // attempt the history records (a worker lost between the send and its
    // outcome), never for any other reason.
    let mut texts: HashMap<&str, usize> = HashMap::new();
    for (to, _) in &seen.sms {
        *texts.entry(to).or_default() += 1;
    }
    let mut sms_repeats = 0;
    for account in accounts.iter().filter(|a| a.address.starts_with('+')) {
        let jobs: Vec<_> = finished
            .iter()
            .filter(|f| f.1 == "send_sms" && f.5["user_id"] == account.user_id.as_str())
            .collect();
        let sent = jobs.iter().filter(|f| f.2 == "succeeded").count();
        let attempts: i32 = jobs.iter().map(|f| f.3).sum();
        let got = texts.get(account.address.as_str()).copied().unwrap_or(0);
        assert!(
            got >= sent && got as i32 <= attempts,
            "{} texts for {sent} sent notices in {attempts} attempts",
            got
        );
        sms_repeats += got - sent;
    }

    // Webhooks: one completion event per job that asked, each delivery
    // that succeeded was received and answered 200.
    let mut events: HashMap<String, usize> = HashMap::new();
    for (id, kind, state, _, _, payload) in &finished {
        if kind != "deliver_webhook" {
            continue;
        }
        *events
            .entry(payload["job_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
        if state == "succeeded" {
            let answers = seen.hooks.get(&id.to_string());
            assert!(
                answers.is_some_and(|a| a.contains(&200)),
                "webhook event {id} never acknowledged"
            );
        }
    }
    for id in &accepted.with_webhook {
        assert_eq!(events.get(id).copied().unwrap_or(0), 1, "events of {id}");
    }
    let hook_repeats: usize = seen.hooks.values().map(|a| a.len() - 1).sum();

    // The ledger: each account's balance and reservations are what its
    // entries say, nothing stays reserved, and each priced job was charged
    // when it succeeded and refunded when it did not, once.
    let unbalanced: Vec<(uuid::Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT a.user_id, a.balance, a.reserved,
                (coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('grant', 'purchase', 'refund')), 0)
               - coalesce(sum(e.amount) FILTER (WHERE e.kind = 'reserve'), 0))::bigint,
                (coalesce(sum(e.amount) FILTER (WHERE e.kind = 'reserve'), 0)
               - coalesce(sum(e.amount) FILTER (WHERE e.kind IN ('charge', 'refund')), 0))::bigint
         FROM credit_accounts a LEFT JOIN credit_entries e USING (user_id)
         GROUP BY a.user_id, a.balance, a.reserved",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .filter(|(_, balance, reserved, want_balance, want_reserved)| {
        balance != want_balance || reserved != want_reserved || *reserved != 0
    })
    .collect();
    assert!(unbalanced.is_empty(), "ledgers off: {unbalanced:?}");
    // A job's reservation is its price; a success is charged its own part
    // and hands its follow-ups' part back (they reserve it again), anything
    // else is refunded whole.
    let missettled: Vec<(uuid::Uuid, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT f.id, f.state, e.reserves, e.reserved, e.charged, e.refunded FROM finished_jobs f
         CROSS JOIN LATERAL (
             SELECT count(*) FILTER (WHERE kind = 'reserve') AS reserves,
                    coalesce(sum(amount) FILTER (WHERE kind = 'reserve'), 0)::bigint AS reserved,
                    coalesce(sum(amount) FILTER (WHERE kind = 'charge'), 0)::bigint AS charged,
                    coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunded
             FROM credit_entries WHERE job_id = f.id) e
         WHERE f.credits > 0 AND NOT (
             e.reserves = 1 AND e.reserved = f.credits
             AND e.charged = CASE WHEN f.state = 'succeeded' THEN f.credits - f.follow_up_credits ELSE 0 END
             AND e.refunded = CASE WHEN f.state = 'succeeded' THEN f.follow_up_credits ELSE f.credits END)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        missettled.is_empty(),
        "jobs settled wrong (id, state, reserves, reserved, charged, refunded): {missettled:?}"
    );

    // Each retention slot fired once, across two schedulers dying.
    let slots: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT idempotency_key, count(*) FROM finished_jobs WHERE kind = 'retention_purge'
         GROUP BY idempotency_key",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!slots.is_empty(), "no retention slot fired");
    assert!(
        slots.iter().all(|(_, n)| *n == 1),
        "a slot fired twice: {slots:?}"
    );

    let by_kind = outcomes
        .iter()
        .map(|((kind, state), n)| format!("{kind} {state} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Report {
        jobs: finished.len(),
        lost: lost.len(),
        duplicated: finished_twice + twice.len(),
        by_kind,
        repeats: format!(
            "repeats within recorded attempts: generation requests {generation_repeats}, \
             texts {sms_repeats}, webhook deliveries {hook_repeats}; \
             mails kept from a second send by their key {}",
            seen.emails_deduplicated
        ),
    }
}

/// No table row and no log line holds an account's email address or
/// phone number in the clear.
async fn check_no_plain_contacts(pool: &sqlx::PgPool, logs: &[String], accounts: &[Account]) {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%I', c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (table,) in tables {
        // The name is Postgres' own, quoted by format('%I').
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} t WHERE t::text LIKE '%example.com%' OR t::text LIKE '%{PHONE_PREFIX}%'"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} holds a plain contact");
    }
    for log in logs {
        for account in accounts {
            let digits = account.address.trim_start_matches('+');
            assert!(!log.contains(digits), "a log holds a contact");
        }
        assert!(!log.contains("example.com"), "a log holds an address");
    }
}
