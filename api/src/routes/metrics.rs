use axum::{Router, http::header, response::IntoResponse, routing::get};

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        kiln_store::metrics::render(),
    )
}
