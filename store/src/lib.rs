//! Persistence: one [`Store`] in front of two engines (PostgreSQL and
//! SQLite; SQL and binding only), migrations, object storage, signed URLs,
//! the verification-code key, the worker registry,
//! and the process's metrics registry.

pub mod access_log;
pub mod accounts;
mod code_key;
mod codec;
mod connect;
pub mod credits;
pub mod deletion;
mod error;
pub mod export;
pub mod generations;
mod group_commit;
mod key_file;
pub mod metrics;
mod model;
pub mod notices;
mod objects;
pub mod operator_exports;
pub mod operators;
pub mod orders;
mod pii;
mod postgres;
mod queue;
mod rescue;
pub mod resources;
pub mod retention;
mod rows;
pub mod schedules;
mod sessions;
mod signed_url;
mod sqlite;
mod store;
pub mod subject_requests;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod webhooks;
pub mod workers;

pub use code_key::{CODE_DIGITS, CodeKey};
pub use connect::{ConnectOptions, Pooler, connect};
pub use error::{ObjectsError, SigningKeyError, StoreError};
pub use key_file::load_or_create as load_or_create_key;
pub use model::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, ErrorEntry, Failure, JobRecord, JobState,
    Lease, NewJob, QueueStat, Rescued, StoreEvent, WebhookTarget,
};
pub use objects::{ObjectInfo, ObjectUpload, Objects, S3Options};
pub use pii::Pii;
pub use postgres::{Db, PgStore};
pub use queue::{Database, Engine, JobWrites, Queue};
pub use signed_url::{SignatureError, UrlSigner};
pub use sqlite::SqliteStore;
pub use store::Store;
