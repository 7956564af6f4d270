#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The owner's balance is short of what a job reserves; nothing of
    /// the write was stored.
    #[error("not enough credits")]
    InsufficientCredits,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: expected postgres://… or sqlite:…")]
    UnsupportedUrl(String),
    /// The URLs and the pooler do not fit together (a transaction pooler
    /// without a direct URL, either of them with SQLite).
    #[error("{0}")]
    Misconfigured(&'static str),
    /// The direct connection (`LISTEN`, migrations) failed to open.
    #[error("direct database connection (database.direct_url): {0}")]
    Direct(#[source] sqlx::Error),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// This process's personal-data keys are not the ones the database's
    /// data is sealed under.
    #[error("{0}")]
    KeysMismatch(String),
    /// The owner has an unfinished job of a kind that runs one at a time
    /// per account (a data export); nothing was stored.
    #[error("an unfinished job of this kind exists for this account")]
    OneAtATime,
    /// A concurrent request with the same idempotency key rolled back
    /// while this one waited for it; the caller may try again.
    #[error("a concurrent request with the same idempotency key did not finish; try again")]
    Contended,
    /// The task that writes grouped enqueues stopped before answering.
    #[error("the enqueue writer stopped before answering; try again")]
    WriterGone,
    /// The connection of a group commit failed (see `group_commit.rs`);
    /// whether this request's write was stored is unknown.
    #[error("database error in a group commit: {0}")]
    GroupFailed(String),
    /// The disk under the database is full (SQLite `SQLITE_FULL`, Postgres
    /// `53100`): the write was refused and none of it stored; the same
    /// write may pass once space is freed.
    #[error("the database's disk is full: {0}")]
    StorageFull(String),
}

impl StoreError {
    /// Whether the database could not be reached (connection refused or
    /// lost, no connection free in time, the pool closed, the server
    /// shutting down or starting up), as opposed to refusing a statement:
    /// a moment later the same request may pass.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| SERVER_UNAVAILABLE_SQLSTATES.contains(&code.as_ref())),
            StoreError::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            StoreError::GroupFailed(_) | StoreError::WriterGone | StoreError::StorageFull(_) => {
                true
            }
            _ => false,
        }
    }
}

/// What Postgres answers while it cannot serve, for a moment: a restart
/// ends every session (`57P01 admin_shutdown`, `57P02 crash_shutdown`) and
/// refuses new ones until it is up (`57P03 cannot_connect_now`); a full
/// server refuses connections (`53300 too_many_connections`); a primary
/// that became a standby in a failover refuses writes (`25006
/// read_only_sql_transaction`) until clients reach the new primary.
const SERVER_UNAVAILABLE_SQLSTATES: [&str; 5] = ["57P01", "57P02", "57P03", "53300", "25006"];

/// Object storage failed, or was asked for something that is not a key.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The backend failed (I/O, network, permissions).
    #[error("object storage: {0}")]
    Backend(String),
    /// A caller built a key that could escape its prefix or is not a key at
    /// all: a bug in the caller, never retried.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
}

/// A secret key (the URL-signing key, the verification-code key) is
/// missing, unreadable or too weak; the text names which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SigningKeyError(pub String);

/// What the credit-reserving triggers raise when the balance is short
/// (`migrations/*/0013_credits.sql`): a SQLSTATE on Postgres, a message on
/// SQLite.
const INSUFFICIENT_CREDITS_SQLSTATE: &str = "KC402";
const INSUFFICIENT_CREDITS_MESSAGE: &str = "kiln: insufficient credits";

/// The index of migration 0022 that keeps one data export per account:
/// Postgres names it; SQLite names its column.
const ONE_EXPORT_INDEX: &str = "jobs_one_data_export";
const ONE_EXPORT_SQLITE_MESSAGE: &str = "UNIQUE constraint failed: jobs.owner";

/// Out of disk: Postgres' `disk_full`, SQLite's `SQLITE_FULL` (its
/// primary result code, the low byte of the extended one sqlx reports).
const DISK_FULL_SQLSTATE: &str = "53100";
const SQLITE_FULL: i64 = 13;

fn is_disk_full(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else {
        return false;
    };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.parse::<i64>().is_ok_and(|c| c & 0xff == SQLITE_FULL)
    } else {
        code == DISK_FULL_SQLSTATE
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && (db.code().as_deref() == Some(INSUFFICIENT_CREDITS_SQLSTATE)
                || db.message() == INSUFFICIENT_CREDITS_MESSAGE)
        {
            return StoreError::InsufficientCredits;
        }
        if let sqlx::Error::Database(db) = &e
            && (db.constraint() == Some(ONE_EXPORT_INDEX)
                || db.message() == ONE_EXPORT_SQLITE_MESSAGE)
        {
            return StoreError::OneAtATime;
        }
        if let sqlx::Error::Database(db) = &e
            && is_disk_full(db.as_ref())
        {
            return StoreError::StorageFull(db.message().to_owned());
        }
        StoreError::Database(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// A store that fails while a job runs fails the attempt, not the job: a
/// transient `store_unavailable` carrying the store's message, so handlers
/// can use `?` on store calls.
impl From<StoreError> for kiln_jobs::JobError {
    fn from(e: StoreError) -> Self {
        kiln_jobs::JobError::transient("store_unavailable", e.to_string())
    }
}

/// Storage that fails while a job runs fails the attempt (transient
/// `store_unavailable`, as for the database); a bad key is the caller's bug
/// and fails the job.
impl From<ObjectsError> for kiln_jobs::JobError {
    fn from(e: ObjectsError) -> Self {
        match e {
            ObjectsError::Backend(_) => {
                kiln_jobs::JobError::transient("store_unavailable", e.to_string())
            }
            ObjectsError::InvalidKey { .. } => {
                kiln_jobs::JobError::permanent("invalid_object_key", e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_fails_the_attempt_transiently() {
        let error = kiln_jobs::JobError::from(ObjectsError::Backend("disk full".into()));
        assert_eq!(
            error,
            kiln_jobs::JobError::transient("store_unavailable", "object storage: disk full")
        );
    }
}
