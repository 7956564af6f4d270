//! Upscaling through fal.ai's queue API.
//!
//! The queue API is asynchronous: `POST {queue}/{model_id}` queues the
//! request and answers with its status, result and cancel URLs; kiln polls
//! the status until `COMPLETED`, fetches the result and downloads the image
//! at once (fal's file URLs expire). The request carries only the source
//! image's URL and the factor, nothing that names a person. The key goes
//! only to the queue host.

use std::{io::Cursor, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{
    Response, StatusCode, Url,
    header::{AUTHORIZATION, HeaderValue},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{UpscaleRequest, UpscaledImage, Upscaler, cancelled_error};
use crate::{ProviderError, http};

const PROVIDER: &str = "fal";

pub const DEFAULT_QUEUE_BASE_URL: &str = "https://queue.fal.run";
pub const DEFAULT_MODEL_ID: &str = "fal-ai/esrgan";

/// Consecutive transient status-poll failures tolerated: the request is
/// already queued and paid for, so a blip must not abandon it.
const MAX_POLL_FAILURES: u32 = 3;

/// Where and how to reach fal's queue, and how long to wait for a result.
#[derive(Clone)]
pub struct FalEndpoint {
    /// e.g. `https://queue.fal.run`.
    pub queue_base_url: String,
    /// e.g. `fal-ai/esrgan` or `fal-ai/clarity-upscaler`.
    pub model_id: String,
    pub api_key: SecretString,
    /// Per HTTP request.
    pub timeout: Duration,
    /// Pause between status polls.
    pub poll_interval: Duration,
    /// From submission to `COMPLETED`; past it the request is cancelled at
    /// fal and the attempt fails as a transient `timeout`.
    pub max_wait: Duration,
}

/// Upscaling against fal.ai's queue API.
pub struct FalUpscaler {
    client: reqwest::Client,
    queue_base_url: String,
    model_id: String,
    api_key: SecretString,
    poll_interval: Duration,
    max_wait: Duration,
}

/// The URLs fal answers a submission with. Used as given rather than
/// rebuilt: for nested model ids (`fal-ai/flux/dev`) they differ from the
/// submit path.
#[derive(Debug, Deserialize)]
struct Queued {
    request_id: String,
    status_url: String,
    response_url: String,
    cancel_url: String,
}

#[derive(Deserialize)]
struct StatusAnswer {
    status: String,
    queue_position: Option<u64>,
}

/// `{"image": {...}}` (esrgan, clarity-upscaler) or `{"images": [...]}`.
#[derive(Deserialize)]
struct ResultAnswer {
    image: Option<ImageFile>,
    #[serde(default)]
    images: Vec<ImageFile>,
}

#[derive(Deserialize)]
struct ImageFile {
    url: String,
    width: Option<u32>,
    height: Option<u32>,
}

enum Poll {
    Waiting,
    Completed,
}

impl FalUpscaler {
    pub fn new(endpoint: FalEndpoint) -> FalUpscaler {
        FalUpscaler {
            client: http::client(endpoint.timeout),
            queue_base_url: endpoint.queue_base_url,
            model_id: endpoint.model_id,
            api_key: endpoint.api_key,
            poll_interval: endpoint.poll_interval,
            max_wait: endpoint.max_wait,
        }
    }

    /// `Authorization: Key …`, marked sensitive so it never shows in debug
    /// output of the request.
    fn auth(&self) -> Result<HeaderValue, ProviderError> {
        let mut value = HeaderValue::from_str(&format!("Key {}", self.api_key.expose_secret()))
            .map_err(|_| {
                ProviderError::permanent(
                    "invalid_api_key",
                    "upscale.api_key has characters an HTTP header cannot carry",
                )
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    async fn submit(&self, req: &UpscaleRequest) -> Result<Queued, ProviderError> {
        let url = format!(
            "{}/{}",
            self.queue_base_url.trim_end_matches('/'),
            self.model_id.trim_matches('/')
        );
        let response = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.auth()?)
            .json(&json!({ "image_url": req.image_url, "scale": req.scale }))
            .send()
            .await
            .map_err(|e| http::transport_error(PROVIDER, &e))?;
        if !response.status().is_success() {
            return Err(failure(response, req).await);
        }
        let queued: Queued = response.json().await.map_err(|e| {
            ProviderError::transient(
                "invalid_response",
                format!(
                    "{PROVIDER} sent an unexpected submit answer: {}",
                    no_url(&e)
                ),
            )
        })?;
        // These URLs get the key: only on the host it is meant for.
        for url in [&queued.status_url, &queued.response_url, &queued.cancel_url] {
            if !same_origin(url, &self.queue_base_url) {
                return Err(ProviderError::permanent(
                    "invalid_response",
                    format!("{PROVIDER} answered with a request URL outside its queue host"),
                ));
            }
        }
        Ok(queued)
    }

    /// An authenticated GET of one of the queue's URLs, read as `T`;
    /// `what` names the answer in errors ("status", "result").
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        req: &UpscaleRequest,
        what: &str,
    ) -> Result<T, ProviderError> {
        let response = self
            .client
            .get(url)
            .header(AUTHORIZATION, self.auth()?)
            .send()
            .await
            .map_err(|e| http::transport_error(PROVIDER, &e))?;
        if !response.status().is_success() {
            return Err(failure(response, req).await);
        }
        response.json().await.map_err(|e| {
            ProviderError::transient(
                "invalid_response",
                format!("{PROVIDER} sent an unexpected {what}: {}", no_url(&e)),
            )
        })
    }

    async fn poll(&self, queued: &Queued, req: &UpscaleRequest) -> Result<Poll, ProviderError> {
        let answer: StatusAnswer = self.get_json(&queued.status_url, req, "status").await?;
        match answer.status.as_str() {
            "IN_QUEUE" | "IN_PROGRESS" => {
                tracing::debug!(
                    request_id = %queued.request_id,
                    status = %answer.status,
                    queue_position = ?answer.queue_position,
                    "fal: waiting"
                );
                Ok(Poll::Waiting)
            }
            "COMPLETED" => Ok(Poll::Completed),
            other => Err(ProviderError::transient(
                "invalid_response",
                format!("{PROVIDER} sent an unknown status {other:?}"),
            )),
        }
    }

    /// Polls until `COMPLETED`, `max_wait`, cancellation or too many
    /// failures; in every case but completion the request is dropped at fal
    /// so it is not run (and billed) for nobody.
    async fn wait(
        &self,
        queued: &Queued,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.max_wait;
        let mut failures = 0;
        loop {
            let mut pause = self.poll_interval;
            let polled = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(self.cancelled(queued).await),
                polled = self.poll(queued, req) => polled,
            };
            match polled {
                Ok(Poll::Completed) => return Ok(()),
                Ok(Poll::Waiting) => failures = 0,
                Err(ProviderError::Transient {
                    code, retry_after, ..
                }) if failures < MAX_POLL_FAILURES => {
                    failures += 1;
                    tracing::warn!(
                        request_id = %queued.request_id,
                        %code,
                        failures,
                        "fal: status poll failed, polling on"
                    );
                    pause = pause.max(retry_after.unwrap_or_default());
                }
                Err(e) => {
                    self.cancel_at_fal(queued).await;
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.cancel_at_fal(queued).await;
                return Err(ProviderError::transient(
                    "timeout",
                    format!(
                        "{PROVIDER} did not finish within {} ms; the request was cancelled",
                        self.max_wait.as_millis()
                    ),
                ));
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(self.cancelled(queued).await),
                () = tokio::time::sleep(pause.min(deadline - now)) => {}
            }
        }
    }

    async fn cancelled(&self, queued: &Queued) -> ProviderError {
        self.cancel_at_fal(queued).await;
        cancelled_error()
    }

    /// `PUT cancel_url`, best effort: 202 cancelled, 400 already completed
    /// (nothing left to stop); anything else is logged, since the caller's
    /// own error is the one that matters.
    async fn cancel_at_fal(&self, queued: &Queued) {
        let Ok(auth) = self.auth() else { return };
        match self
            .client
            .put(&queued.cancel_url)
            .header(AUTHORIZATION, auth)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::BAD_REQUEST => {
                tracing::debug!(request_id = %queued.request_id, status = r.status().as_u16(), "fal: cancel sent");
            }
            Ok(r) => tracing::warn!(
                request_id = %queued.request_id,
                status = r.status().as_u16(),
                "fal: cancel refused"
            ),
            Err(e) => tracing::warn!(
                request_id = %queued.request_id,
                error = %no_url(&e),
                "fal: cancel not delivered"
            ),
        }
    }

    /// A request fal failed may still show `COMPLETED`: the result fetch
    /// then answers the error (`{"detail": …}`), read like any other.
    async fn result(
        &self,
        queued: &Queued,
        req: &UpscaleRequest,
    ) -> Result<ImageFile, ProviderError> {
        let answer: ResultAnswer = self.get_json(&queued.response_url, req, "result").await?;
        answer
            .image
            .or_else(|| answer.images.into_iter().next())
            .ok_or_else(|| {
                ProviderError::transient(
                    "invalid_response",
                    format!("{PROVIDER} sent a result without an image"),
                )
            })
    }
}

#[async_trait]
impl Upscaler for FalUpscaler {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn upscale(
        &self,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<UpscaledImage, ProviderError> {
        // Nothing queued yet: nothing to cancel at fal.
        if cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        // The submission itself is not raced against `cancel`: dropping it
        // mid-flight could leave a queued request we know nothing about.
        let queued = self.submit(req).await?;
        tracing::debug!(request_id = %queued.request_id, model = %self.model_id, "fal: queued");
        self.wait(&queued, req, cancel).await?;
        // Completed (and billed): cancelling now only stops our own work.
        let fetch = async {
            let file = self.result(&queued, req).await?;
            // fal's file CDN, without the key: it is not the queue host.
            let bytes =
                http::download_image(&self.client, PROVIDER, &file.url, "the upscaled image")
                    .await?;
            described(bytes, file.width, file.height)
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled_error()),
            image = fetch => image,
        }
    }
}

/// Names the image by its bytes, not by what the server claims, and
/// refuses anything that is not PNG, JPEG or WebP before it is stored. A
/// PNG's size is read from its header (what will be stored); otherwise
/// from the result JSON.
fn described(
    bytes: Bytes,
    width: Option<u32>,
    height: Option<u32>,
) -> Result<UpscaledImage, ProviderError> {
    let invalid =
        |what: String| ProviderError::transient("invalid_image", format!("{PROVIDER} sent {what}"));
    let content_type = crate::image_type(&bytes)
        .ok_or_else(|| invalid("a result that is not a PNG, JPEG or WebP image".to_owned()))?;
    let (width, height) = if content_type == "image/png" {
        let reader = png::Decoder::new(Cursor::new(&bytes))
            .read_info()
            .map_err(|e| invalid(format!("a PNG that does not decode: {e}")))?;
        (reader.info().width, reader.info().height)
    } else {
        match (width, height) {
            (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
            _ => return Err(invalid(format!("an {content_type} without its size"))),
        }
    };
    Ok(UpscaledImage {
        bytes,
        content_type: content_type.to_owned(),
        width,
        height,
    })
}

/// Reads a non-success answer. fal's body is `{"detail": "…"}` or, for
/// validation errors, `{"detail": [{"loc", "msg", "type", "input"}]}`: only
/// the `msg`s are kept, since `input` echoes the signed image URL.
async fn failure(response: Response, req: &UpscaleRequest) -> ProviderError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| match v.get("detail")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                let msgs: Vec<&str> = items
                    .iter()
                    .filter_map(|i| i.get("msg").and_then(Value::as_str))
                    .collect();
                (!msgs.is_empty()).then(|| msgs.join("; "))
            }
            _ => None,
        })
        .map(|m| redact(&m, req));
    http::status_error(PROVIDER, status, &headers, None, message)
}

/// The provider's message without signed URLs: the request's own URL is
/// named, and any other URL loses its query string.
fn redact(message: &str, req: &UpscaleRequest) -> String {
    let message = if req.image_url.is_empty() {
        message.to_owned()
    } else {
        message.replace(&req.image_url, "<image_url>")
    };
    message
        .split(' ')
        .map(|word| match word.find("://").and(word.find('?')) {
            Some(q) => format!("{}?<redacted>", &word[..q]),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// reqwest's message without the request URL (it may carry a signature).
fn no_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

fn same_origin(url: &str, base: &str) -> bool {
    match (Url::parse(url), Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_signed_urls() {
        let req = UpscaleRequest {
            image_url: "https://kiln.example/f/a.png?sig=abc".to_owned(),
            scale: 2,
            source_png: None,
        };
        assert_eq!(
            redact(
                "could not fetch https://kiln.example/f/a.png?sig=abc or https://x.example/b?t=1 now",
                &req
            ),
            "could not fetch <image_url> or https://x.example/b?<redacted> now"
        );
    }

    #[test]
    fn request_urls_must_stay_on_the_queue_host() {
        assert!(same_origin(
            "https://queue.fal.run/fal-ai/esrgan/requests/1/status",
            "https://queue.fal.run"
        ));
        assert!(!same_origin(
            "https://evil.example/x",
            "https://queue.fal.run"
        ));
        assert!(!same_origin(
            "http://queue.fal.run/x",
            "https://queue.fal.run"
        ));
        assert!(!same_origin("not a url", "https://queue.fal.run"));
    }
}
