//! The one error type of the API: an RFC 9457 problem with a stable
//! machine `code`, and the extractors that turn bad input into one.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_input`, `unauthorized`,
    /// `not_found`, `conflict`, `underage`, `payload_too_large`,
    /// `weak_password`, `invalid_code`, `unverified`, `rate_limited`,
    /// `insufficient_credits`, `unavailable`, `storage_full`.
    pub code: &'static str,
    /// Seconds for a `Retry-After` header (429, 503), not in the body.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://kiln.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            retry_after: None,
        }
    }

    /// 429 `rate_limited`, with `Retry-After` in whole seconds (at least 1).
    pub fn rate_limited(wait: std::time::Duration, detail: impl Into<String>) -> Problem {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Problem {
            retry_after: Some(secs.max(1)),
            ..Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    /// 503 `unavailable`: a service the request needs did not answer. The
    /// cause is logged here, once.
    pub fn unavailable(cause: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "a dependency did not answer");
        Problem {
            retry_after: Some(5),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a service this request needs is not answering; try again shortly",
            )
        }
    }

    /// 503 `storage_full`: the database's disk is full, so the write was
    /// refused and nothing of it stored; the operator must free space.
    /// Logged here, once.
    pub fn storage_full(cause: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %cause,
            "the database's disk is full: writes are refused until space is freed");
        Problem {
            retry_after: Some(30),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_full",
                "the service is out of storage and stored nothing of this request; try again later",
            )
        }
    }

    /// The same problem about item `i` of a batch (`items[3]: …`).
    pub fn at_item(mut self, i: usize) -> Problem {
        self.detail = format!("items[{i}]: {}", self.detail);
        self
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_input", detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn not_found(what: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 402: the account's balance is short of the request's price; nothing
    /// was enqueued.
    pub fn insufficient_credits() -> Problem {
        Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            "your credit balance is short of what this request costs; see GET /v1/credits",
        )
    }

    /// 403: the owner restricted the account, so it starts no new jobs.
    pub fn restricted() -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "restricted",
            "your account is restricted and starts no new jobs; lift it with DELETE /v1/me/restriction",
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// Whether this says the database is away for a moment (503
    /// `unavailable`): a waiting reader may look again once it is back.
    pub fn is_unavailable(&self) -> bool {
        self.code == "unavailable"
    }

    /// A fault on our side. The cause is logged here, once; the client
    /// gets no internals.
    pub fn internal(cause: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; try again",
        )
    }
}

impl From<kiln_store::StoreError> for Problem {
    fn from(e: kiln_store::StoreError) -> Problem {
        match e {
            kiln_store::StoreError::Contended | kiln_store::StoreError::OneAtATime => {
                Problem::conflict(e.to_string())
            }
            kiln_store::StoreError::InsufficientCredits => Problem::insufficient_credits(),
            kiln_store::StoreError::StorageFull(_) => Problem::storage_full(e),
            // The database is down or overloaded: 503 with Retry-After,
            // the request may be repeated (with its Idempotency-Key).
            e if e.is_unavailable() => Problem::unavailable(e),
            e => Problem::internal(e),
        }
    }
}

impl From<kiln_store::ObjectsError> for Problem {
    fn from(e: kiln_store::ObjectsError) -> Problem {
        Problem::internal(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `axum::Json`, but malformed bodies answer as problems, and only a JSON
/// object is a request body (serde would also read a struct from a
/// positional array). Text may not contain NUL characters: Postgres cannot
/// store them, and no field of ours needs one.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    e.body_text(),
                )
            } else {
                Problem::bad_request(e.body_text())
            }
        })?;
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some()
            && first != Some(&b'{')
            && serde_json::from_slice::<serde_json::Value>(&body).is_ok()
        {
            return Err(Problem::invalid("the request body must be a JSON object"));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&body).map_err(json_problem)?;
        if contains_nul(&body) {
            return Err(Problem::invalid("text must not contain NUL characters"));
        }
        Ok(Json(value))
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A raw NUL byte, or the JSON escape for one (`\u0000`).
fn contains_nul(body: &[u8]) -> bool {
    body.contains(&0)
        || body
            .windows(6)
            .any(|w| w[0] == b'\\' && w[1] == b'u' && &w[2..] == b"0000")
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => Problem::invalid(e.body_text()),
        other => Problem::bad_request(other.body_text()),
    }
}

/// `axum::extract::Path`, but a path that does not parse names nothing:
/// 404 as a problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| Problem::not_found("resource"))
    }
}

/// `axum::extract::Query`, but bad query strings answer as problems.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

impl<T> IntoResponse for Json<T>
where
    axum::Json<T>: IntoResponse,
{
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Parses an id from the path; anything else is a 404 (ids are opaque).
pub fn parse_id(raw: &str, what: &str) -> Result<uuid::Uuid, Problem> {
    raw.parse().map_err(|_| Problem::not_found(what))
}
