//! kiln behind PgBouncer in transaction pooling mode (Debian's
//! `pgbouncer`; CI installs it), through the real binaries: a `serve` and
//! two `work` processes reach Postgres through a pool of 3 server
//! connections (`database.pooler = "transaction"`), and each holds its
//! `LISTEN` and runs its migrations over `database.direct_url`. Sign-ups,
//! enqueues from several clients at once and claims all go through the
//! pooler; every job succeeds, an idle worker hears of a new job at once
//! (its fallback poll is 30 s), and no statement fails on a server
//! connection that changed under it.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Client, Kiln, SHARED_CODE_KEY, Through, free_addr, kiln};
use kiln_store::testing::TestDatabase;
use serde_json::{Value, json};

/// Server connections PgBouncer keeps to the database: fewer than the
/// processes' pools hold, so they are shared.
const POOL_SIZE: usize = 3;

fn pgbouncer_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian installs it in /usr/sbin, which a user's PATH may lack.
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
}

/// A PgBouncer in front of the test server, for one database; stopped
/// when dropped.
struct PgBouncer {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(binary: &Path, db: &TestDatabase) -> PgBouncer {
        let url = reqwest::Url::parse(&db.url).unwrap();
        let name = url.path().trim_start_matches('/');
        let user = match url.username() {
            "" => "postgres",
            user => user,
        };
        let password = url
            .password()
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 {name} = host={host} port={port} dbname={name} user={user}{password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {listen}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {POOL_SIZE}\n\
                 max_client_conn = 500\n",
                host = url.host_str().unwrap_or("127.0.0.1"),
                port = url.port().unwrap_or(5432),
                listen = addr.port(),
                users = dir.path().join("users.txt").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("pgbouncer.log");
        let mut cmd = Command::new(binary);
        // PgBouncer refuses to run as root; it reads its files as the
        // user it becomes.
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            for file in ["", "users.txt", "pgbouncer.ini"] {
                let mode = if file.is_empty() { 0o755 } else { 0o644 };
                std::fs::set_permissions(
                    dir.path().join(file),
                    std::fs::Permissions::from_mode(mode),
                )
                .unwrap();
            }
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut bouncer = PgBouncer {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                bouncer.child.try_wait().unwrap().is_none(),
                "pgbouncer exited: {}",
                bouncer.log_text()
            );
            assert!(Instant::now() < deadline, "pgbouncer never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// `db`'s URL with PgBouncer's address in place of the server's.
    fn url(&self, db: &TestDatabase) -> String {
        let mut url = reqwest::Url::parse(&db.url).unwrap();
        url.set_ip_host(self.addr.ip()).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process(role: &str, db: &TestDatabase, bouncer: &PgBouncer, outbox: &Path) -> Kiln {
    kiln(&[role])
        .database(&bouncer.url(db))
        .env("KILN_DATABASE_POOLER", "transaction")
        .env("KILN_DATABASE_DIRECT_URL", &db.url)
        .env("KILN_DATABASE_MAX_CONNECTIONS", 6)
        .env("KILN_API_CODE_KEY", SHARED_CODE_KEY)
        .env("KILN_EMAIL_OUTBOX_DIR", outbox.display())
        // Only a notification wakes an idle worker in time.
        .env("KILN_WORKER_POLL_INTERVAL_MS", 30_000)
        .spawn()
}

/// Log lines that say a statement failed on the pooler: a prepared
/// statement missing (`26000`) or taken (`42P05`) on the server connection
/// it reached. Postgres' messages name it; the codes alone could match a
/// uuid.
fn statement_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("prepared statement"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_enqueues_and_migrations_work_behind_pgbouncer_in_transaction_mode() {
    let Some(binary) = pgbouncer_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "pgbouncer is not installed; CI installs Debian's pgbouncer"
        );
        eprintln!("skipped: pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    };
    let db = TestDatabase::postgres().await;
    let bouncer = PgBouncer::start(&binary, &db);
    let outbox = tempfile::tempdir().unwrap();

    // Three processes start at once and migrate (over the direct URL,
    // under the migrator's session lock) before serving.
    let api = process("serve", &db, &bouncer, outbox.path());
    let workers = [
        process("work", &db, &bouncer, outbox.path()),
        process("work", &db, &bouncer, outbox.path()),
    ];
    for k in std::iter::once(&api).chain(&workers) {
        k.wait_healthy().await;
    }
    let store = db.store().await.unwrap();
    assert!(store.migrations_current().await.unwrap(), "migrations");
    let ready = reqwest::get(api.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    // Four clients sign up and enqueue at once through the one pool.
    let through = Through {
        api: &api,
        mailer: &workers[0],
    };
    let signed_up = tokio::join!(
        Client::signed_up(&through, "ada.0@example.com"),
        Client::signed_up(&through, "ada.1@example.com"),
        Client::signed_up(&through, "ada.2@example.com"),
        Client::signed_up(&through, "ada.3@example.com"),
    );
    let enqueued_at = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for (n, client) in [signed_up.0, signed_up.1, signed_up.2, signed_up.3]
        .into_iter()
        .enumerate()
    {
        clients.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let r = client
                    .request(reqwest::Method::POST, "/v1/generations")
                    .header("Idempotency-Key", format!("bouncer-{n}-{i}"))
                    .json(&json!({"prompt": "a fox behind a bouncer", "size": "256x256"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                assert_eq!(status, 202, "{body}");
                ids.push(body["id"].as_str().unwrap().to_owned());
            }
            for id in &ids {
                let job = client.wait_final(id).await;
                assert_eq!(job["state"], "succeeded", "{job}");
            }
            (client, ids.len())
        });
    }
    let mut ada = None;
    let mut done = 0;
    while let Some(joined) = clients.join_next().await {
        let (client, n) = joined.unwrap();
        done += n;
        ada = Some(client);
    }
    assert_eq!(done, 40);
    let all_done = enqueued_at.elapsed();
    let ada = ada.unwrap();

    // Idle workers hear of a new job through LISTEN on the direct
    // connection: it runs long before their 30 s poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let id = ada
        .accepted(
            "/v1/generations",
            json!({"prompt": "a quick fox", "size": "256x256"}),
        )
        .await;
    let job = ada.wait_final(&id).await;
    let took = started.elapsed();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(took < Duration::from_secs(5), "picked up after {took:?}");

    // The pooler shared its few server connections among many clients,
    // and not one statement failed on a changed server connection.
    let pooler_log = bouncer.log_text();
    let clients = pooler_log.matches("login attempt").count();
    let servers = pooler_log.matches("new connection to server").count();
    assert!(
        servers <= POOL_SIZE && clients > servers,
        "{clients} client and {servers} server connections:\n{pooler_log}"
    );
    for k in std::iter::once(&api).chain(&workers) {
        let log = k.log_text();
        let errors = statement_errors(&log);
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(
            !log.contains("\"level\":\"ERROR\""),
            "an error was logged:\n{log}"
        );
    }
    assert!(statement_errors(&pooler_log).is_empty(), "{pooler_log}");

    // What the pooler costs one statement: a job read by id, in this
    // process, through PgBouncer and straight to Postgres.
    let pooled = kiln_store::connect(&kiln_store::ConnectOptions {
        url: bouncer.url(&db),
        direct_url: Some(db.url.clone()),
        pooler: kiln_store::Pooler::Transaction,
        max_connections: 2,
        wait: false,
        session_cache: Duration::ZERO,
        pii: kiln_store::testing::test_pii(),
    })
    .await
    .unwrap();
    let id: uuid::Uuid = id.parse().unwrap();
    let mut median = Vec::new();
    for store in [&pooled, &store] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            assert!(store.get(id).await.unwrap().is_some());
            times.push(started.elapsed());
        }
        times.sort();
        median.push(times[times.len() / 2]);
    }
    eprintln!(
        "pgbouncer: 40 jobs from 4 clients enqueued and succeeded in {all_done:?}, through \
         {clients} client and {servers} server connections; an idle worker ran a new job \
         {took:?} after it was enqueued; a job read takes {:?} through the pooler, {:?} direct \
         (medians of 200)",
        median[0], median[1]
    );
}

/// A transaction pooler without the direct URL it needs, or with SQLite,
/// stops kiln at start (exit code 2), naming the setting; so does a direct
/// URL that is not Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_without_a_direct_url_is_refused_at_start() {
    for (url, pooler, direct, names) in [
        (
            "postgres://kiln@127.0.0.1:6432/kiln",
            "transaction",
            None,
            "database.direct_url",
        ),
        (
            "sqlite:data/kiln.db",
            "transaction",
            None,
            "database.pooler",
        ),
        (
            "postgres://kiln@127.0.0.1:6432/kiln",
            "transaction",
            Some("sqlite:data/kiln.db"),
            "database.direct_url",
        ),
        (
            "postgres://kiln@127.0.0.1:6432/kiln",
            "statement",
            None,
            "database.pooler",
        ),
    ] {
        let mut builder = kiln(&["work"])
            .database(url)
            .env("KILN_DATABASE_POOLER", pooler);
        if let Some(direct) = direct {
            builder = builder.env("KILN_DATABASE_DIRECT_URL", direct);
        }
        let mut k = builder.spawn();
        let status = k.wait_exit(Duration::from_secs(30)).await;
        let log = k.log_text();
        assert_eq!(status.code(), Some(2), "{url} {pooler} {direct:?}: {log}");
        assert!(log.contains(names), "{url} {pooler} {direct:?}: {log}");
    }
}
