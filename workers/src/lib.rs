//! The worker runtime (apalis 1.0 over kiln's own `jobs` table) and one
//! handler per job kind.

mod config;
mod context;
pub mod handlers;
pub mod providers;
mod registry;
mod runtime;

pub use config::{WorkerConfig, WorkerConfigError};
pub use context::{JobContext, Outcome};
pub use registry::{Handler, Registry};
pub use runtime::{RunError, run};
