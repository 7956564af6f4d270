//! The worker runtime (apalis 1.0 over kiln's own `jobs` table) and one
//! handler per job kind. The providers the handlers call live in
//! `kiln-providers`.

mod clock;
mod config;
mod context;
pub mod handlers;
mod registry;
mod runtime;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::Clock;
pub use config::{WorkerConfig, WorkerConfigError};
pub use context::{JobContext, Outcome};
pub use registry::{Handler, Registry};
pub use runtime::{RunError, hostname, run};
