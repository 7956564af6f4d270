//! Starting and stopping the roles of one process: API, workers, scheduler.

use std::net::SocketAddr;

use anyhow::Context;
use kiln_api::AppState;
use kiln_store::{ConnectOptions, Store};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        workers: true,
        scheduler: true,
    };
    pub const SERVE: Roles = Roles {
        api: true,
        workers: false,
        scheduler: false,
    };
    pub const WORK: Roles = Roles {
        api: false,
        workers: true,
        scheduler: false,
    };
    pub const SCHEDULE: Roles = Roles {
        api: false,
        workers: false,
        scheduler: true,
    };
}

/// Connects (waiting for an unreachable database) and migrates when asked.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let pii = settings
        .encryption
        .pii()
        .map_err(anyhow::Error::msg)
        .context("loading the personal-data keys")?;
    let store = kiln_store::connect(&ConnectOptions {
        url: settings.database.url.clone(),
        direct_url: settings.database.direct_url.clone(),
        pooler: settings.database.pooler,
        max_connections: settings.database.max_connections,
        wait: true,
        session_cache: std::time::Duration::from_secs(settings.api.session_cache_secs),
        pii: std::sync::Arc::new(pii),
    })
    .await
    .context("opening the database (database.url)")?;
    if settings.database.migrate_on_start {
        store.migrate().await.context("migrating the database")?;
    } else {
        store.check_pii_keys().await?;
    }
    // Accounts from before addresses were sealed are sealed now, once.
    let sealed = store.reseal_accounts(false, 500, |_, _| {}).await?;
    if sealed > 0 {
        tracing::info!(
            accounts = sealed,
            "sealed the addresses of accounts stored in the clear"
        );
    }
    Ok(store)
}

/// `kiln keys rotate`: a new key seals from now on (a new `k<N>.key` in
/// `encryption.key_dir`, or the configured `encryption.current_key`), and
/// every account is resealed under it in batches. Old keys stay readable,
/// so what runs meanwhile keeps working.
pub async fn keys(settings: Settings, command: crate::cli::KeysCommand) -> anyhow::Result<()> {
    let crate::cli::KeysCommand::Rotate { batch } = command;
    if !settings.encryption.configured() {
        let id = kiln_store::Pii::add_key_file(&settings.encryption.key_dir)
            .map_err(|e| anyhow::anyhow!("encryption.key_dir: {e}"))?;
        eprintln!(
            "kiln: new key {id} in {}",
            settings.encryption.key_dir.display()
        );
    }
    let store = open_store(&settings).await?;
    let total = store.count_accounts().await?;
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "resealing {bar:40} {pos}/{len} accounts ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let resealed = store
        .reseal_accounts(true, batch, |_, examined| {
            if let Some(bar) = &bar {
                bar.set_position(examined);
            }
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("resealed {resealed} of {total} accounts");
    Ok(())
}

pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&Settings {
        database: crate::config::DatabaseSettings {
            migrate_on_start: true,
            ..settings.database.clone()
        },
        ..settings
    })
    .await?;
    tracing::info!(database = store.backend_name(), "migrations applied");
    Ok(())
}

/// `kiln user …`: grants or revokes the operator role, and writes the
/// change to the account's access log (no IP: it came from this machine's
/// command line).
pub async fn user(settings: Settings, command: crate::cli::UserCommand) -> anyhow::Result<()> {
    use crate::cli::UserCommand;
    use kiln_store::access_log::{AccessEvent, Origin};
    let (address, operator, event) = match &command {
        UserCommand::GrantOperator { address } => (address, true, AccessEvent::OperatorGranted),
        UserCommand::RevokeOperator { address } => (address, false, AccessEvent::OperatorRevoked),
    };
    let identifier = kiln_api::parse_address(address).map_err(|p| {
        anyhow::anyhow!("{address:?} is not an email or phone number: {}", p.detail)
    })?;
    let store = open_store(&settings).await?;
    let Some(user) = store.set_operator(&identifier, operator).await? else {
        anyhow::bail!("no account has the address {address:?}");
    };
    let origin = Origin {
        ip: None,
        user_agent: Some(format!("kiln {} (command line)", env!("CARGO_PKG_VERSION"))),
    };
    store.record_access(Some(user), event, &origin).await?;
    println!(
        "{} the operator role {} account {user}",
        if operator { "granted" } else { "revoked" },
        if operator { "to" } else { "from" }
    );
    Ok(())
}

/// `kiln schedule --list`: each plan, its cron and setting, the slot any
/// replica last handled, and its next fire times (UTC).
pub async fn list_schedule(settings: Settings) -> anyhow::Result<()> {
    let plans = kiln_scheduler::plans(&settings.scheduler).map_err(anyhow::Error::msg)?;
    let store = open_store(&settings).await?;
    let records = store.plan_records().await?;
    let now = chrono::Utc::now();
    for plan in &plans {
        let last = records
            .iter()
            .find(|r| r.plan == plan.name)
            .and_then(|r| r.last_slot)
            .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
        println!(
            "{}  {:?} (scheduler.{})  last slot: {last}",
            plan.name,
            plan.schedule.to_string(),
            plan.setting
        );
        for at in kiln_scheduler::next_fires(&plan.schedule, now, 5) {
            println!("  next {}", at.to_rfc3339());
        }
    }
    Ok(())
}

/// Runs the given roles until SIGTERM or SIGINT, then stops them in order.
pub async fn run(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    // Bind before connecting, so a taken port fails fast and clearly, and
    // say where at once: with port 0 the OS picks the port, and this is
    // how whoever started kiln learns it (the API line comes first).
    let public = if roles.api {
        let listener = bind(settings.http.addr, "http.addr").await?;
        tracing::info!(addr = %listener.local_addr()?, "API listening");
        Some(listener)
    } else {
        None
    };
    let internal = bind(settings.metrics.addr, "metrics.addr").await?;
    if roles.workers {
        // Its maintenance loop keeps them; from the first scrape on.
        kiln_store::metrics::show_queue_gauges();
    }
    let internal_addr = internal.local_addr()?;
    tracing::info!(addr = %internal_addr, "metrics listening");

    let store = tokio::select! {
        store = open_store(&settings) => store?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let objects = settings
        .storage
        .objects()
        .map_err(|e| anyhow::anyhow!("opening object storage: {e}"))?;
    let signer = match &settings.storage.signing_key {
        Some(hex_key) => kiln_store::UrlSigner::new(hex::decode(hex_key)?)?,
        None => kiln_store::UrlSigner::load_or_create(&settings.storage.signing_key_file)
            .context("loading the URL signing key (storage.signing_key_file)")?,
    };
    let signer = std::sync::Arc::new(signer);
    let codes = match settings.api.code_key_bytes() {
        Some(key) => kiln_store::CodeKey::new(key?)?,
        None => kiln_store::CodeKey::load_or_create(&settings.api.code_key_file)
            .context("loading the verification code key (api.code_key_file)")?,
    };
    let codes = std::sync::Arc::new(codes);
    let throttle: std::sync::Arc<dyn kiln_api::Throttle> = match &settings.rate_limits.redis_url {
        Some(url) => std::sync::Arc::new(RedisThrottle(
            kiln_providers::limits::RedisWindows::new(url, &settings.rate_limits.key_prefix)
                .map_err(anyhow::Error::msg)
                .context("rate_limits.redis_url")?,
        )),
        None => std::sync::Arc::new(kiln_api::LocalThrottle::new()),
    };
    let shop = shop(&settings, public.as_ref())?;
    // The merchant's notification series, at 0 from the first scrape.
    let outcomes: Vec<&str> = kiln_store::orders::PaymentOutcome::NAMES
        .iter()
        .chain(&kiln_providers::payments::WebhookRefusal::CODES)
        .copied()
        .collect();
    kiln_store::metrics::show_payment_series(shop.merchant.name(), &outcomes);
    let mut dependencies: Vec<std::sync::Arc<dyn kiln_api::Dependency>> = Vec::new();
    if let Some(url) = &settings.rate_limits.redis_url {
        dependencies.push(std::sync::Arc::new(RedisDependency(url.clone())));
    }
    let state = AppState {
        dependencies,
        store: store.clone(),
        objects: objects.clone(),
        signer: signer.clone(),
        config: std::sync::Arc::new(settings.api.clone()),
        credits: std::sync::Arc::new(settings.credits.clone()),
        retention: std::sync::Arc::new(settings.retention.clone()),
        shop: std::sync::Arc::new(shop),
        seen_ips: Default::default(),
        streams: Default::default(),
        codes: codes.clone(),
        throttle,
        webhook_guard: std::sync::Arc::new(settings.webhooks.guard()),
    };
    let mut tasks = tokio::task::JoinSet::new();

    let limits = crate::server::Limits::from_settings(&settings.http);
    if roles.api
        && settings.api.client_ip_header.is_some()
        && settings.http.max_connections_per_ip > 0
    {
        tracing::warn!(
            limit = settings.http.max_connections_per_ip,
            "api.client_ip_header says a proxy is in front, so connections come from the proxy's address; http.max_connections_per_ip limits the proxy itself (0 turns it off)"
        );
    }
    tasks.spawn(crate::server::serve(
        internal,
        kiln_api::internal_router(state.clone()),
        limits,
        shutdown.clone(),
    ));
    if let Some(public) = public {
        tasks.spawn(crate::server::serve(
            public,
            kiln_api::router(state.clone()),
            limits,
            shutdown.clone(),
        ));
    }
    if roles.workers {
        let links = kiln_workers::handlers::ObjectLinks {
            signer: signer.clone(),
            public_base_url: settings.storage.public_base_url.clone(),
            ttl: std::time::Duration::from_secs(settings.api.signed_url_ttl_secs),
        };
        let mut deps = kiln_workers::handlers::Deps::from_settings(
            &settings.providers(),
            objects.clone(),
            links,
            codes.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        deps.export_link_ttl = std::time::Duration::from_secs(settings.api.export_link_ttl_secs);
        deps.notify_batch = settings.worker.notify_batch;
        let registry = kiln_workers::handlers::registry(&settings.retention, &deps);
        let worker_id = worker_id();
        let config = settings.worker.clone();
        let store = store.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            kiln_workers::run(store, registry, config, worker_id, shutdown)
                .await
                .map_err(anyhow::Error::msg)
        });
    }
    if roles.scheduler {
        let plans = kiln_scheduler::plans(&settings.scheduler).map_err(anyhow::Error::msg)?;
        let catch_up = settings.scheduler.catch_up;
        let store = store.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            kiln_scheduler::run(store, plans, catch_up, shutdown).await;
            Ok(())
        });
    }

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            // One role failing stops the others: a half-running process
            // would look healthy while doing nothing.
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// How credits are sold. The dev merchant's checkout pages and its
/// notifications go to `storage.public_base_url` when set, else straight to
/// this process's listener.
fn shop(
    settings: &Settings,
    public: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<kiln_api::Shop> {
    use kiln_providers::payments::Provider;
    let payments = &settings.payments;
    let (base_url, dev_secret) = match payments.provider {
        Provider::Dev => {
            let base = match (&settings.storage.public_base_url, public) {
                (Some(base), _) => base.clone(),
                (None, Some(listener)) => {
                    let mut addr = listener.local_addr()?;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    format!("http://{addr}")
                }
                (None, None) => String::new(),
            };
            let secret = kiln_store::load_or_create_key(
                &payments.dev_secret_file,
                "dev payments signing secret",
            )
            .context("loading the dev payments secret (payments.dev_secret_file)")?;
            (base, secret)
        }
        Provider::Paddle => (String::new(), Vec::new()),
    };
    kiln_api::Shop::new(payments, &base_url, dev_secret).map_err(anyhow::Error::msg)
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop kiln with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// Unique per process, readable in the `lease_owner` column.
fn worker_id() -> String {
    let host = kiln_workers::hostname();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// The Redis that provider limits live in, for `/readyz`.
struct RedisDependency(String);

#[async_trait::async_trait]
impl kiln_api::Dependency for RedisDependency {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), kiln_api::DependencyError> {
        kiln_providers::limits::ping_redis(&self.0, std::time::Duration::from_secs(2))
            .await
            .map_err(kiln_api::DependencyError)
    }
}

/// The API's per-address limits in Redis, shared by every `serve`.
struct RedisThrottle(kiln_providers::limits::RedisWindows);

fn count_windows(windows: &[kiln_api::Window]) -> Vec<kiln_providers::limits::CountWindow> {
    windows
        .iter()
        .map(|w| kiln_providers::limits::CountWindow {
            max: w.max,
            per: w.per,
        })
        .collect()
}

#[async_trait::async_trait]
impl kiln_api::Throttle for RedisThrottle {
    async fn hit(
        &self,
        key: &str,
        windows: &[kiln_api::Window],
    ) -> Result<Option<std::time::Duration>, kiln_api::DependencyError> {
        self.0
            .hit(key, &count_windows(windows))
            .await
            .map_err(|e| kiln_api::DependencyError(e.to_string()))
    }

    async fn peek(
        &self,
        key: &str,
        windows: &[kiln_api::Window],
    ) -> Result<Option<std::time::Duration>, kiln_api::DependencyError> {
        self.0
            .peek(key, &count_windows(windows))
            .await
            .map_err(|e| kiln_api::DependencyError(e.to_string()))
    }
}
