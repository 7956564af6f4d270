//! Persistence: the `jobs` table on PostgreSQL and SQLite behind one
//! interface ([`Queue`]), migrations, and the process's metrics registry.

pub mod accounts;
mod connect;
mod error;
pub mod generations;
pub mod metrics;
mod model;
mod objects;
mod postgres;
mod queue;
mod rescue;
mod signed_url;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use connect::{ConnectOptions, Store, connect};
pub use error::StoreError;
pub use model::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, ErrorEntry, Failure, JobRecord, JobState,
    Lease, NewJob, QueueStat, Rescued, StoreEvent,
};
pub use objects::{Objects, S3Options};
pub use postgres::PgStore;
pub use queue::{Database, Queue};
pub use signed_url::{SignatureError, UrlSigner};
pub use sqlite::SqliteStore;
