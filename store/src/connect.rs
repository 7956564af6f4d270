use std::{sync::Arc, time::Duration};

use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{PgStore, SqliteStore, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `postgres://…` or `sqlite:path/to/file.db`.
    pub url: String,
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
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let connect: PgConnectOptions = url.parse()?;
        let pool_options = PgPoolOptions::new()
            .max_connections(options.max_connections)
            // No ping before every statement: it doubled the round trips of
            // each request. A connection broken meanwhile fails its next
            // statement, which is retried or reported like any other
            // database fault, and is then replaced.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10));
        // One plain connection first: the pool would retry silently until
        // its acquire timeout, and an operator should see why kiln waits.
        let mut delay = Duration::from_millis(200);
        loop {
            match PgConnection::connect_with(&connect).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    break;
                }
                Err(e) if options.wait && is_unreachable(&e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                        "database unreachable; waiting for it");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let pool = pool_options.connect_with(connect).await?;
        let events = Store::channel();
        Ok(Store::new(
            Arc::new(PgStore::new(pool, events.clone())),
            events,
            options.session_cache,
            options.pii.clone(),
        ))
    } else if url.starts_with("sqlite:") {
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
