//! The HTTP API section of `kiln bench`: a real `kiln serve` child process
//! under load from C keep-alive connections (enqueue one, enqueue a batch,
//! poll a job's status), the same load against a bare axum handler, and
//! what kiln adds to a generation beyond the providers' own time.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, StatusCode,
    client::conn::http1,
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use kiln_store::JobState;
use serde::Deserialize;
use serde_json::json;
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};
use uuid::Uuid;

use super::{BenchArgs, Percentiles, ms, scratch_postgres, scratch_sqlite};

/// Requests before this are not measured: connections open, caches and
/// pools fill.
const WARM_UP: Duration = Duration::from_secs(1);
/// Unmeasured generations before the sampled ones: the first pay for cold
/// connections on both sides.
const WARM_GENERATIONS: u32 = 5;
const BATCH_ITEMS: usize = 100;
const PROMPT: &str = "a red fox";

/// One line of the API table; `None` prints as `-`.
pub(crate) struct ApiRow {
    database: &'static str,
    measurement: String,
    requests_per_sec: Option<f64>,
    jobs_per_sec: Option<f64>,
    latency: Option<Percentiles>,
    non_2xx: Option<u64>,
    note: String,
}

impl ApiRow {
    fn new(database: &'static str, measurement: impl Into<String>) -> ApiRow {
        ApiRow {
            database,
            measurement: measurement.into(),
            requests_per_sec: None,
            jobs_per_sec: None,
            latency: None,
            non_2xx: None,
            note: String::new(),
        }
    }

    fn loaded(mut self, load: &Load, jobs_per_request: Option<usize>) -> ApiRow {
        let rps = load.per_sec();
        self.requests_per_sec = Some(rps);
        self.jobs_per_sec = jobs_per_request.map(|n| rps * n as f64);
        self.latency = load.latency;
        self.non_2xx = Some(load.non_2xx);
        self
    }

    fn with_latency(mut self, latency: Option<Percentiles>) -> ApiRow {
        self.latency = latency;
        self
    }

    fn note(mut self, note: impl Into<String>) -> ApiRow {
        self.note = note.into();
        self
    }
}

/// Both databases, as `--skip-postgres` and `--skip-sqlite` allow. Each
/// database gets a fresh one for the generations: the load runs leave a
/// backlog a worker would be busy with for minutes.
pub async fn rows(args: &BenchArgs) -> anyhow::Result<Vec<ApiRow>> {
    let mut rows = Vec::new();
    if !args.skip_postgres {
        let db = scratch_postgres(args).await?;
        rows.extend(loads("postgres", &db.url, args).await?);
        let db = scratch_postgres(args).await?;
        rows.push(generations("postgres", &db.url, args).await?);
    }
    if !args.skip_sqlite {
        let db = scratch_sqlite()?;
        rows.extend(loads("sqlite", &db.url, args).await?);
        let db = scratch_sqlite()?;
        rows.push(generations("sqlite", &db.url, args).await?);
    }
    Ok(rows)
}

/// Rows 1 to 3: enqueue one, enqueue a batch, and poll a status under
/// `--http-connections` connections, then the poll against bare axum.
async fn loads(database: &'static str, url: &str, args: &BenchArgs) -> anyhow::Result<Vec<ApiRow>> {
    let dir = tempfile::tempdir().context("creating a temporary directory for kiln serve")?;
    let http = free_addr()?;
    let mut serve = spawn_kiln("serve", url, dir.path(), http, loopback(0))?;
    wait_ready(&mut serve, http, "/healthz").await?;
    let mut conn = Conn::open(http).await?;
    // Several accounts, as a service has: each account's enqueues wait
    // for each other on its credit balance (one row lock), so one account
    // on every connection would measure that account, not the API.
    let mut tokens = Vec::new();
    let accounts = args.http_accounts as usize;
    for n in 0..accounts {
        tokens.push(sign_in(&mut conn, url, dir.path(), &format!("bench{n}@example.com")).await?);
    }
    let token = &tokens[0];
    let connections = args.http_connections;
    let mut rows = Vec::new();

    let single = tokens
        .iter()
        .map(|t| Call::post("/v1/generations", t, &json!({ "prompt": PROMPT })))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Also the job that the status poll reads, owned by the first account.
    let job: JobBody = conn.json(&single[0], StatusCode::ACCEPTED).await?;
    super::checkpoint(url).await?;
    let load = run_load(http, args, &single).await?;
    load.ensure_ok("POST /v1/generations")?;
    rows.push(
        ApiRow::new(
            database,
            format!(
                "API enqueue, single: POST /v1/generations, {connections} connections, {accounts} accounts"
            ),
        )
        .loaded(&load, Some(1)),
    );

    let items = vec![json!({ "prompt": PROMPT }); BATCH_ITEMS];
    let batch = tokens
        .iter()
        .map(|t| Call::post("/v1/generations/batch", t, &json!({ "items": items })))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let label = format!(
        "API enqueue, batch of {BATCH_ITEMS}: POST /v1/generations/batch, {connections} connections, {accounts} accounts"
    );
    // The batch route is new; a build without it answers 404 (or 405 if
    // another route takes the path), which is a note, not a failure.
    let (status, body) = conn.send(&batch[0]).await?;
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        rows.push(
            ApiRow::new(database, label)
                .note(format!("the route answered {status}: not in this build")),
        );
    } else {
        ensure!(
            status == StatusCode::ACCEPTED,
            "POST /v1/generations/batch answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let jobs: BatchBody = serde_json::from_slice(&body).context("reading the batch answer")?;
        ensure!(
            jobs.jobs.len() == BATCH_ITEMS,
            "POST /v1/generations/batch made {} jobs of {BATCH_ITEMS} items",
            jobs.jobs.len()
        );
        super::checkpoint(url).await?;
        let load = run_load(http, args, &batch).await?;
        load.ensure_ok("POST /v1/generations/batch")?;
        rows.push(ApiRow::new(database, label).loaded(&load, Some(BATCH_ITEMS)));
    }

    let poll = [Call::get(&format!("/v1/jobs/{}", job.id), Some(token))?];
    let kiln = run_load(http, args, &poll).await?;
    kiln.ensure_ok("GET /v1/jobs/{id}")?;
    drop(serve);

    // The same requests against a handler that only answers: what axum,
    // hyper and this machine cost by themselves.
    let bare_addr = free_addr()?;
    let mut bare = spawn(
        Command::new(exe()?)
            .args(["bench", "--serve-bare-axum", &bare_addr.to_string()])
            .env("KILN_LOG_LEVEL", "warn"),
        "kiln bench --serve-bare-axum",
    )?;
    wait_ready(&mut bare, bare_addr, &poll[0].path).await?;
    let baseline = run_load(bare_addr, args, &poll).await?;
    baseline.ensure_ok("bare axum GET /v1/jobs/{id}")?;
    let ratio = kiln.per_sec() / baseline.per_sec();
    rows.push(
        ApiRow::new(
            database,
            format!("status poll: GET /v1/jobs/{{id}}, {connections} connections"),
        )
        .loaded(&kiln, None)
        .note(format!("{ratio:.2}x bare axum")),
    );
    rows.push(
        ApiRow::new(
            database,
            format!("bare axum handler, same requests, {connections} connections"),
        )
        .loaded(&baseline, None)
        .note("1.00x"),
    );
    Ok(rows)
}

/// Row 4: sequential generations through the API with dev providers,
/// enqueue -> the client sees `succeeded`, against the provider time the
/// worker records. Postgres runs `serve` and `work` apart, as deployed;
/// SQLite is one process (`all`), whose wake-ups are in-process.
async fn generations(
    database: &'static str,
    url: &str,
    args: &BenchArgs,
) -> anyhow::Result<ApiRow> {
    let dir = tempfile::tempdir().context("creating a temporary directory for kiln")?;
    let http = free_addr()?;
    let postgres = database == "postgres";
    let mut api = spawn_kiln(
        if postgres { "serve" } else { "all" },
        url,
        dir.path(),
        http,
        loopback(0),
    )?;
    wait_ready(&mut api, http, "/healthz").await?;
    // After `serve` is up: it created the signing key file both share.
    let _work = if postgres {
        let metrics = free_addr()?;
        let mut work = spawn_kiln("work", url, dir.path(), loopback(0), metrics)?;
        wait_ready(&mut work, metrics, "/healthz").await?;
        Some(work)
    } else {
        None
    };

    let mut conn = Conn::open(http).await?;
    let token = sign_in(&mut conn, url, dir.path(), "bench@example.com").await?;
    let create = Call::post("/v1/generations", &token, &json!({ "prompt": PROMPT }))?;
    let samples = args.generation_samples;
    let mut took = Vec::with_capacity(samples as usize);
    for i in 0..WARM_GENERATIONS + samples {
        let started = Instant::now();
        let job: JobBody = conn.json(&create, StatusCode::ACCEPTED).await?;
        let poll = Call::get(&format!("/v1/jobs/{}?wait=30", job.id), Some(&token))?;
        // Each answer is a change (stage, progress); ask again until final.
        let state = loop {
            let now: JobBody = conn.json(&poll, StatusCode::OK).await?;
            if now.state.is_final() {
                break now.state;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "generation {} did not finish in 120 s",
                job.id
            );
        };
        ensure!(
            state == JobState::Succeeded,
            "generation {} ended {}",
            job.id,
            state.as_str()
        );
        if i >= WARM_GENERATIONS {
            took.push(started.elapsed());
        }
    }
    let provider = Percentiles::of(provider_latencies(url).await?)
        .context("no generation recorded a provider time")?;
    let end_to_end = Percentiles::of(took);
    let adds = end_to_end.map_or("-".to_owned(), |e| ms(e.p50.saturating_sub(provider.p50)));
    Ok(ApiRow::new(
        database,
        format!(
            "generation, enqueue -> client sees succeeded: {samples} sequential, {}",
            if postgres { "serve + work" } else { "all" }
        ),
    )
    .note(format!(
        "provider p50 {} p99 {} (generations.provider_latency_ms); kiln adds {adds} at p50",
        ms(provider.p50),
        ms(provider.p99)
    ))
    .with_latency(end_to_end))
}

/// The provider time of the sampled generations (the warm-up ones are the
/// oldest), in whole milliseconds as the column keeps them.
async fn provider_latencies(url: &str) -> anyhow::Result<Vec<Duration>> {
    let millis: Vec<i64> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        let rows: Vec<i32> = sqlx::query_scalar(
            "SELECT provider_latency_ms FROM generations
             WHERE provider_latency_ms IS NOT NULL ORDER BY created_at, id OFFSET $1",
        )
        .bind(i64::from(WARM_GENERATIONS))
        .fetch_all(&pool)
        .await
        .context("reading generations.provider_latency_ms")?;
        pool.close().await;
        rows.into_iter().map(i64::from).collect()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let rows = sqlx::query_scalar(
            "SELECT provider_latency_ms FROM generations
             WHERE provider_latency_ms IS NOT NULL ORDER BY created_at, id LIMIT -1 OFFSET ?",
        )
        .bind(i64::from(WARM_GENERATIONS))
        .fetch_all(&pool)
        .await
        .context("reading generations.provider_latency_ms")?;
        pool.close().await;
        rows
    };
    Ok(millis
        .into_iter()
        .map(|m| Duration::from_millis(m.max(0) as u64))
        .collect())
}

/// The hidden `kiln bench --serve-bare-axum ADDR`: one route answering a
/// small JSON body, the ceiling for the status poll on this machine.
pub async fn serve_bare_axum(addr: SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/v1/jobs/{id}",
        axum::routing::get(
            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                axum::Json(json!({ "id": id, "state": "queued" }))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app)
        .await
        .context("bare axum server failed")
}

#[derive(Deserialize)]
struct JobBody {
    id: Uuid,
    state: JobState,
}

#[derive(Deserialize)]
struct BatchBody {
    jobs: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Session {
    token: String,
}

/// Registers a bench user, gives it credits, verifies it and signs in; the
/// answer is the bearer token. The `serve` child may run without workers, so no message
/// carries the code: the bench derives it from the stored code row under
/// the key file it gave the child (`dir/code.key`), as a worker would.
async fn sign_in(conn: &mut Conn, url: &str, dir: &Path, email: &str) -> anyhow::Result<String> {
    let account = json!({
        "email": email,
        "password": "bench lantern quietly humming",
    });
    let mut register = account.clone();
    register["birth_date"] = json!("1990-01-01");
    let register = Call::new(Method::POST, "/v1/auth/register", None, Some(&register))?;
    let (status, body) = conn.send(&register).await?;
    ensure!(
        status == StatusCode::ACCEPTED,
        "POST /v1/auth/register answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let code = {
        let store = kiln_store::connect(&kiln_store::ConnectOptions {
            url: url.to_owned(),
            direct_url: None,
            pooler: Default::default(),
            // One of them holds the store's LISTEN.
            max_connections: 2,
            wait: false,
            session_cache: std::time::Duration::ZERO,
            // The keys the child made, to find the account by its address.
            pii: std::sync::Arc::new(kiln_store::Pii::load_or_create(&dir.join("pii-keys"))?),
        })
        .await
        .context("opening the bench database to read the code")?;
        let keys = kiln_store::CodeKey::load_or_create(&dir.join("code.key"))?;
        let user = store
            .login_record(&kiln_store::accounts::Identifier::Email(email.to_owned()))
            .await?
            .context("the bench user was not created")?;
        let latest = store
            .codes(user.user_id)
            .await?
            .into_iter()
            .next()
            .context("no verification code was issued")?;
        // Every enqueue reserves credits: enough for any run.
        store
            .grant_credits(user.user_id, 1_000_000_000, "bench")
            .await?;
        keys.code(latest.id)
    };
    let verify = json!({ "email": email, "code": code });
    let verify = Call::new(Method::POST, "/v1/auth/verify", None, Some(&verify))?;
    let (status, body) = conn.send(&verify).await?;
    ensure!(
        status == StatusCode::OK,
        "POST /v1/auth/verify answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let login = Call::new(Method::POST, "/v1/auth/login", None, Some(&account))?;
    let session: Session = conn.json(&login, StatusCode::OK).await?;
    Ok(session.token)
}

/// One request, prepared once and sent many times.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    auth: Option<HeaderValue>,
    body: Option<Bytes>,
}

impl Call {
    fn new(
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Call> {
        let auth = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .context("the bearer token is not a header value")?;
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()?;
        Ok(Call {
            method,
            path: path.to_owned(),
            auth,
            body,
        })
    }

    fn post(path: &str, token: &str, body: &serde_json::Value) -> anyhow::Result<Call> {
        Call::new(Method::POST, path, Some(token), Some(body))
    }

    fn get(path: &str, token: Option<&str>) -> anyhow::Result<Call> {
        Call::new(Method::GET, path, token, None)
    }
}

/// One keep-alive HTTP/1.1 connection: a bare hyper client, so the load
/// generator takes as little CPU as it can from the server it measures.
struct Conn {
    host: HeaderValue,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; it ends when `sender` is dropped.
        tokio::spawn(connection);
        Ok(Conn {
            host: HeaderValue::from_str(&addr.to_string())?,
            sender,
        })
    }

    async fn send(&mut self, call: &Call) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(header::HOST, self.host.clone());
        if let Some(auth) = &call.auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        if call.body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(call.body.clone().unwrap_or_default()))?;
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request)
            .await
            .with_context(|| format!("{} {}", call.method, call.path))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends and reads the JSON answer, which must have status `expect`.
    async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        call: &Call,
        expect: StatusCode,
    ) -> anyhow::Result<T> {
        let (status, body) = self.send(call).await?;
        ensure!(
            status == expect,
            "{} {} answered {status}: {}",
            call.method,
            call.path,
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body)
            .with_context(|| format!("reading the answer to {} {}", call.method, call.path))
    }
}

/// What the connections measured between the warm-up and the deadline.
struct Load {
    requests: usize,
    took: Duration,
    latency: Option<Percentiles>,
    /// Answers outside 2xx, the warm-up included.
    non_2xx: u64,
    first_bad: Option<String>,
}

impl Load {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / self.took.as_secs_f64()
    }

    fn ensure_ok(&self, what: &str) -> anyhow::Result<()> {
        if self.non_2xx > 0 {
            bail!(
                "{what}: {} answers outside 2xx, the first: {}",
                self.non_2xx,
                self.first_bad.as_deref().unwrap_or("-")
            );
        }
        Ok(())
    }
}

/// `--http-connections` tasks, each sending one of `calls` (connection
/// `i` the `i % len`th) over its own connection back to back until the
/// deadline. Requests started in the warm-up are sent but not measured.
async fn run_load(addr: SocketAddr, args: &BenchArgs, calls: &[Call]) -> anyhow::Result<Load> {
    let measure_from = Instant::now() + WARM_UP;
    let until = measure_from + Duration::from_secs(args.http_seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.http_connections as usize {
        let call = calls[i % calls.len()].clone();
        tasks.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut latencies = Vec::new();
            let mut non_2xx = 0;
            let mut first_bad = None;
            loop {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                let (status, body) = conn.send(&call).await?;
                if !status.is_success() {
                    non_2xx += 1;
                    first_bad.get_or_insert_with(|| {
                        format!("{status} {}", String::from_utf8_lossy(&body))
                    });
                }
                if started >= measure_from {
                    latencies.push(started.elapsed());
                }
            }
            anyhow::Ok((latencies, non_2xx, first_bad))
        });
    }
    let mut all = Vec::new();
    let mut non_2xx = 0;
    let mut first_bad = None;
    while let Some(joined) = tasks.join_next().await {
        let (latencies, bad, first) = joined.context("a load task panicked")??;
        all.extend(latencies);
        non_2xx += bad;
        first_bad = first_bad.or(first);
    }
    // From the warm-up's end until the last answer came in.
    let took = measure_from.elapsed();
    Ok(Load {
        requests: all.len(),
        took,
        latency: Percentiles::of(all),
        non_2xx,
        first_bad,
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port free right now: the OS picks it, and the child binds it next.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(loopback(0)).context("finding a free local port")?;
    Ok(listener.local_addr()?)
}

fn exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("locating the kiln binary")
}

/// `kiln <role>` on the bench database, with its files under `dir`, cheap
/// password hashing (the bench signs in, it does not measure bcrypt) and
/// dev providers.
fn spawn_kiln(
    role: &str,
    url: &str,
    dir: &Path,
    http: SocketAddr,
    metrics: SocketAddr,
) -> anyhow::Result<Child> {
    spawn(
        Command::new(exe()?)
            .arg(role)
            .env("KILN_DATABASE_URL", url)
            .env("KILN_HTTP_ADDR", http.to_string())
            .env("KILN_METRICS_ADDR", metrics.to_string())
            .env("KILN_LOG_LEVEL", "warn")
            .env("KILN_API_BCRYPT_COST", "4")
            .env("KILN_STORAGE_ROOT", dir.join("objects"))
            .env("KILN_STORAGE_SIGNING_KEY_FILE", dir.join("signing.key"))
            .env("KILN_API_CODE_KEY_FILE", dir.join("code.key"))
            .env("KILN_ENCRYPTION_KEY_DIR", dir.join("pii-keys"))
            .env("KILN_EMAIL_OUTBOX_DIR", dir.join("outbox"))
            .env("KILN_SMS_OUTBOX_DIR", dir.join("outbox")),
        &format!("kiln {role}"),
    )
}

fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting `{what}`"))
}

/// Waits until `GET path` on `addr` answers 200, failing early if the
/// child exits.
async fn wait_ready(child: &mut Child, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let probe = Call::get(path, None)?;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("a kiln child process exited before it was ready: {status}");
        }
        if let Ok(mut conn) = Conn::open(addr).await
            && let Ok((StatusCode::OK, _)) = conn.send(&probe).await
        {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{addr} did not answer GET {path} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn print_table(args: &BenchArgs, rows: &[ApiRow]) {
    println!(
        "\nkiln bench, HTTP API: one `kiln serve` child process, {} keep-alive connections for {} s after a {} s warm-up; {} sequential generations with dev providers\n",
        args.http_connections,
        args.http_seconds,
        WARM_UP.as_secs(),
        args.generation_samples
    );
    println!("| database | measurement | requests/s | jobs/s | p50 | p99 | non-2xx | note |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    let number = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.database,
            r.measurement,
            number(r.requests_per_sec),
            number(r.jobs_per_sec),
            r.latency.map_or("-".to_owned(), |p| ms(p.p50)),
            r.latency.map_or("-".to_owned(), |p| ms(p.p99)),
            r.non_2xx.map_or("-".to_owned(), |n| n.to_string()),
            if r.note.is_empty() { "-" } else { &r.note },
        );
    }
}
