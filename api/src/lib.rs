//! The HTTP surface: the public API router and the internal listener
//! (`/metrics`). Never calls a provider; enqueues work for the workers.

mod problem;
mod routes;
mod state;

pub use problem::Problem;
pub use routes::{internal_router, router};
pub use state::AppState;
