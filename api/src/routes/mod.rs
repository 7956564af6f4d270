mod admin;
mod auth;
mod credits;
mod exports;
mod generations;
mod health;
mod images;
mod job_events;
mod jobs;
mod me;
mod metrics;
mod notices;
mod openapi;
mod operator_page;
mod operators;
mod payments;
mod upscales;
mod workers;

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

use tracing::Instrument;

use crate::{AppState, Problem};

pub use job_events::OpenStreams;
pub use openapi::ApiDoc;

/// The public API.
pub fn router(state: AppState) -> Router {
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    let body_limit = state.config.body_limit_bytes;
    Router::new()
        .merge(health::routes())
        .merge(auth::routes())
        .merge(credits::routes())
        .merge(payments::routes(state.shop.dev.is_some()))
        .merge(me::routes())
        .merge(admin::routes())
        .merge(notices::routes())
        .merge(operator_page::routes())
        .merge(operators::routes())
        .merge(workers::routes())
        .merge(exports::routes())
        .merge(generations::routes())
        .merge(jobs::routes())
        .merge(images::routes())
        .merge(upscales::routes())
        .merge(openapi::routes())
        // Before the body is read (so before hyper answers `Expect:
        // 100-continue`): a body declared larger than the limit is refused
        // at once. Inside `observe`, so the refusals are counted.
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            declared_size(body_limit, req, next)
        }))
        // Per matched route, so the label is the template, never an id.
        .route_layer(middleware::from_fn(observe))
        .fallback(|| async { Problem::not_found("route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            within(timeout, req, next)
        }))
        .layer(middleware::from_fn(uri_length))
        // Outermost, so every answer under /admin has them, errors too.
        .layer(middleware::from_fn(operator_page::security_headers))
        .with_state(state)
}

/// The longest request target answered (RFC 9110 asks for at least 8000
/// octets); longer ones get 414 as a problem. A target longer than the
/// whole head may be (`http.max_header_bytes`) is refused by the HTTP
/// parser before this, with 431 and no body.
pub const MAX_URI_BYTES: usize = 8000;

async fn uri_length(req: Request, next: Next) -> Response {
    let length = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if length > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target may be at most {MAX_URI_BYTES} bytes; this one has {length}"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// 413 for a request whose `Content-Length` is over `limit`, before any of
/// its body is read. A chunked body has no length to judge; its reader
/// stops at the limit (`DefaultBodyLimit`) instead.
async fn declared_size(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit as u64
    {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body may be at most {limit} bytes; this one declares {declared}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts each answer and times it, by route template, method and status.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // Only the methods the API routes; anything else is one label.
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    };
    // The request's span, continuing the client's trace when it sent a
    // `traceparent`; jobs it enqueues carry it on.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        kiln_store::trace::continue_trace(&span, parent);
    }
    let started = std::time::Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let m = kiln_store::metrics::metrics();
    m.http_requests
        .with_label_values(&[&route, method, response.status().as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Answers 503 problem+json when a request takes longer than `timeout`.
async fn within(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; try again",
        )
        .into_response(),
    }
}

/// The internal listener: `/metrics` plus health, for any process
/// (including `kiln work`, which serves no public API).
pub fn internal_router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(metrics::routes())
        .with_state(state)
}

/// A page's size (1 to 100, default 20) and the id entries must be older
/// than, from `?limit=&cursor=` of a list paged by increasing numeric ids.
/// A page's limit (1 to 100, default 20) and the id it continues after,
/// for lists paged by a UUID (newest first).
pub(super) fn uuid_page(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(u32, Option<uuid::Uuid>), Problem> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Problem::invalid("limit must be between 1 and 100"));
    }
    let before = cursor
        .map(|c| {
            c.parse::<uuid::Uuid>()
                .map_err(|_| Problem::invalid("cursor is not one this API gave out"))
        })
        .transpose()?;
    Ok((limit, before))
}

pub(super) fn numeric_page(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(u32, Option<i64>), Problem> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Problem::invalid("limit must be between 1 and 100"));
    }
    let before = match cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| Problem::invalid("cursor is not one this API gave out"))?,
        ),
    };
    Ok((limit, before))
}
