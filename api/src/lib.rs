//! The HTTP surface: the public API router and the internal listener
//! (`/metrics`). Never calls a provider; enqueues work for the workers.

mod auth;
mod config;
pub mod generation_request;
mod idempotency;
mod identifier;
mod password;
mod problem;
mod resources;
mod routes;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod throttle;
mod webhook;

pub use config::{ApiConfig, ApiConfigError, CreditsConfig, CreditsConfigError, parse_size};
pub use identifier::parse_address;
pub use problem::{Json, Path, Problem, Query};
pub use resources::{ImageResource, JobResource};
pub use routes::{ApiDoc, internal_router, router};
pub use state::{AppState, Dependency, DependencyError, Shop};
pub use throttle::{LocalThrottle, Throttle, Window};
