//! Persistence: the `jobs` table on PostgreSQL and SQLite behind one
//! interface ([`Queue`]), migrations, and the process's metrics registry.

mod connect;
mod error;
pub mod metrics;
mod model;
mod postgres;
mod queue;
mod rescue;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use connect::{ConnectOptions, Store, connect};
pub use error::StoreError;
pub use model::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, ErrorEntry, Failure, JobRecord, JobState,
    Lease, NewJob, QueueStat, Rescued, StoreEvent,
};
pub use postgres::PgStore;
pub use queue::Queue;
pub use sqlite::SqliteStore;
