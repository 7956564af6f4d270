use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::json;

use crate::{AppState, Problem};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the process runs")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers and its schema is current.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "ready"),
        (status = 503, description = "database unreachable or not migrated", body = Problem),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database does not answer",
        ));
    }
    for dependency in &state.dependencies {
        if let Err(e) = dependency.ping().await {
            tracing::warn!(dependency = dependency.name(), error = %e, "readiness: dependency unreachable");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("{} does not answer", dependency.name()),
            ));
        }
    }
    match state.store.migrations_current().await {
        Ok(true) => Ok(Json(json!({
            "status": "ready",
            "database": state.store.backend_name(),
            "dependencies": state.dependencies.iter().map(|d| d.name()).collect::<Vec<_>>(),
        }))),
        Ok(false) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "database migrations are not current; run `kiln migrate`",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: reading migrations failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database does not answer",
            ))
        }
    }
}
