use std::{sync::Arc, time::Duration};

use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{PgStore, SqliteStore, Store, StoreError, postgres::Db};

/// What stands between kiln and Postgres at `url`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Postgres itself, or a pooler that gives each client a server
    /// connection for its whole session (PgBouncer's `pool_mode =
    /// session`).
    #[default]
    None,
    /// A pooler that lends a server connection per transaction
    /// (PgBouncer's `pool_mode = transaction`): no statement is cached,
    /// each runs in a transaction, and what needs a session goes to the
    /// direct URL.
    Transaction,
}

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `postgres://…` or `sqlite:path/to/file.db`.
    pub url: String,
    /// Postgres itself, when `url` goes through a pooler: `LISTEN` and
    /// migrations use it (required with [`Pooler::Transaction`]).
    pub direct_url: Option<String>,
    pub pooler: Pooler,
    pub max_connections: u32,
    /// Keep retrying while the database is unreachable instead of failing.
    pub wait: bool,
    /// How long a process may answer a session from memory (zero: never).
    pub session_cache: Duration,
    /// The keys personal data is sealed under.
    pub pii: Arc<crate::Pii>,
}

/// Opens the store for `url`. With `wait`, an unreachable Postgres is
/// retried (logging each failure) until it answers.
pub async fn connect(options: &ConnectOptions) -> Result<Store, StoreError> {
    let url = options.url.as_str();
    if is_postgres(url) {
        let mut connect: PgConnectOptions = url.parse()?;
        let pooled = options.pooler == Pooler::Transaction;
        if pooled {
            // A cached statement lives on one server connection, and the
            // pooler hands the next transaction another (see `Db`). And
            // PgBouncer refuses a startup parameter it does not know; this
            // one only shapes floats sent as text, which kiln never reads.
            connect = connect.statement_cache_capacity(0).extra_float_digits(None);
        }
        let direct = match &options.direct_url {
            Some(direct) if is_postgres(direct) => Some(direct.parse::<PgConnectOptions>()?),
            Some(other) => return Err(StoreError::UnsupportedUrl(redact(other))),
            None if pooled => {
                return Err(StoreError::Misconfigured(
                    "a transaction pooler needs a direct URL for LISTEN and migrations",
                ));
            }
            None => None,
        };
        let pool_options = PgPoolOptions::new()
            .max_connections(options.max_connections)
            // No ping before every statement: it doubled the round trips of
            // each request. A connection broken meanwhile fails its next
            // statement, which is retried or reported like any other
            // database fault, and is then replaced.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10));
        reachable(&connect, options.wait).await?;
        let pool = pool_options.connect_with(connect).await?;
        let direct = match direct {
            Some(direct) => {
                reachable(&direct, options.wait)
                    .await
                    .map_err(StoreError::Direct)?;
                // One connection listens, one migrates now and then.
                PgPoolOptions::new()
                    .max_connections(2)
                    .idle_timeout(Duration::from_secs(60))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(direct)
                    .await
                    .map_err(StoreError::Direct)?
            }
            None => pool.clone(),
        };
        let events = Store::channel();
        Ok(Store::new(
            Arc::new(PgStore::new(Db::new(pool, pooled), direct, events.clone())),
            events,
            options.session_cache,
            options.pii.clone(),
        ))
    } else if url.starts_with("sqlite:") {
        if options.pooler != Pooler::None || options.direct_url.is_some() {
            return Err(StoreError::Misconfigured(
                "a pooler and a direct URL are for Postgres, not SQLite",
            ));
        }
        let engine = SqliteStore::open(url, options.max_connections).await?;
        Ok(Store::new(
            Arc::new(engine),
            Store::channel(),
            options.session_cache,
            options.pii.clone(),
        ))
    } else {
        Err(StoreError::UnsupportedUrl(redact(url)))
    }
}

/// One plain connection first: the pool would retry silently until its
/// acquire timeout, and an operator should see why kiln waits. With `wait`,
/// an unreachable server is retried until it answers.
async fn reachable(connect: &PgConnectOptions, wait: bool) -> Result<(), sqlx::Error> {
    let mut delay = Duration::from_millis(200);
    loop {
        match PgConnection::connect_with(connect).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) if wait && is_unreachable(&e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "database unreachable; waiting for it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Errors that may pass when the server comes back, as opposed to a wrong
/// password or database name.
fn is_unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // 57P03: the database system is starting up
        .is_some_and(|c| c == "57P03")
}

/// A URL fit for an error message: the scheme only, never a password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://…"),
        None => url.chars().take(16).collect(),
    }
}
