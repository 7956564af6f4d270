//! What the OpenAI-compatible clients (image generation and moderation)
//! share: where the server is, the authenticated JSON `POST`, and how its
//! error body becomes a [`ProviderError`]. Requests carry only the prompt,
//! the output shape and image URLs or bytes: no `user` field, nothing that
//! names a person.

use std::time::Duration;

use reqwest::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::{ProviderError, http};

pub(crate) const PROVIDER: &str = "openai";

/// Where and how to reach an OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAiEndpoint {
    /// e.g. `https://api.openai.com`; paths start with `/v1/`.
    pub base_url: String,
    pub api_key: SecretString,
    pub timeout: Duration,
}

impl OpenAiEndpoint {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// `{"error":{"message","type","param","code"}}`
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
}

/// Reads a non-success answer into the error the job records. Two codes
/// override the status: a blocked prompt is `content_blocked` and never
/// retried; an exhausted quota (a 429) will not recover by retrying.
pub(crate) async fn failure(response: Response) -> ProviderError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<ErrorBody>(&body)
        .ok()
        .map(|b| b.error);
    let code = detail
        .as_ref()
        .and_then(|d| d.code.clone().or_else(|| d.kind.clone()));
    let message = detail.and_then(|d| d.message);
    match code.as_deref() {
        Some("moderation_blocked") | Some("content_policy_violation") => ProviderError::permanent(
            "content_blocked",
            format!(
                "{PROVIDER} refused the request: {}",
                message.as_deref().unwrap_or("blocked by its safety system")
            ),
        ),
        Some("insufficient_quota") => ProviderError::permanent(
            "insufficient_quota",
            format!(
                "{PROVIDER} answered {}: {}",
                status.as_u16(),
                message.as_deref().unwrap_or("quota exhausted")
            ),
        ),
        _ => http::status_error(PROVIDER, status, &headers, code, message),
    }
}

pub(crate) async fn post_json(
    client: &reqwest::Client,
    endpoint: &OpenAiEndpoint,
    path: &str,
    body: &Value,
) -> Result<Value, ProviderError> {
    let response = client
        .post(endpoint.url(path))
        .bearer_auth(endpoint.api_key.expose_secret())
        .json(body)
        .send()
        .await
        .map_err(|e| http::transport_error(PROVIDER, &e))?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    response
        .json()
        .await
        .map_err(|e| http::transport_error(PROVIDER, &e))
}

/// Checks an OpenAI-compatible settings section (`images`, `moderation`)
/// whose provider is `openai`: a key and an http(s) base URL.
pub(crate) fn validate_settings(
    section: &str,
    base_url: &str,
    api_key: &Option<SecretString>,
) -> Result<(), String> {
    if api_key.is_none() {
        return Err(format!(
            "{section}.api_key: required when {section}.provider = \"openai\""
        ));
    }
    match reqwest::Url::parse(base_url) {
        Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(()),
        _ => Err(format!(
            "{section}.base_url: {base_url:?} is not an http(s) URL"
        )),
    }
}

/// The endpoint a validated settings section describes.
pub(crate) fn endpoint(
    base_url: &str,
    api_key: &Option<SecretString>,
    timeout: Duration,
) -> OpenAiEndpoint {
    OpenAiEndpoint {
        base_url: base_url.to_owned(),
        // Checked by validate() before any build.
        api_key: api_key.clone().unwrap_or_else(|| SecretString::from("")),
        timeout,
    }
}
