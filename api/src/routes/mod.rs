mod health;
mod metrics;

use axum::Router;

use crate::AppState;

/// The public API.
pub fn router(state: AppState) -> Router {
    Router::new().merge(health::routes()).with_state(state)
}

/// The internal listener: `/metrics` plus health, for any process
/// (including `kiln work`, which serves no public API).
pub fn internal_router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(metrics::routes())
        .with_state(state)
}
