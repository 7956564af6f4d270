//! Upscaling through fal.ai's queue API, the offline `dev` upscaler, and
//! the `upscale` settings section that picks one.
//!
//! The queue API is asynchronous: `POST {queue}/{model_id}` queues the
//! request and answers with its status, result and cancel URLs; kiln polls
//! the status until `COMPLETED`, fetches the result and downloads the image
//! at once (fal's file URLs expire). The request carries only the source
//! image's URL and the factor (P8). The key goes only to the queue host.

use std::{io::Cursor, sync::Arc, time::Duration};

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

use super::{ProviderError, UpscaleRequest, UpscaledImage, Upscaler, http};

const PROVIDER: &str = "fal";

pub const DEFAULT_QUEUE_BASE_URL: &str = "https://queue.fal.run";
pub const DEFAULT_MODEL_ID: &str = "fal-ai/esrgan";

/// Consecutive transient status-poll failures tolerated: the request is
/// already queued and paid for, so a blip must not abandon it.
const MAX_POLL_FAILURES: u32 = 3;

/// The factors the dev upscaler accepts.
pub const DEV_MAX_SCALE: u32 = 4;
/// The largest output side the dev upscaler produces.
pub const DEV_MAX_SIDE: u32 = 8192;

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

fn cancelled_error() -> ProviderError {
    ProviderError::permanent("cancelled", "the upscale was cancelled")
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
    let content_type = crate::providers::image_type(&bytes)
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

/// Offline: nearest-neighbour scaling of `req.source_png` (it ignores
/// `image_url`), so the upscale pipeline runs with no network and no keys.
/// The output is a PNG of the same colour type.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevUpscaler;

#[async_trait]
impl Upscaler for DevUpscaler {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn upscale(
        &self,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<UpscaledImage, ProviderError> {
        if !(1..=DEV_MAX_SCALE).contains(&req.scale) {
            return Err(ProviderError::permanent(
                "invalid_scale",
                format!(
                    "scale {} is not one the dev upscaler makes (1 to {DEV_MAX_SCALE})",
                    req.scale
                ),
            ));
        }
        let Some(source) = req.source_png.clone() else {
            return Err(ProviderError::permanent(
                "missing_source",
                "the dev upscaler needs the source PNG in the request",
            ));
        };
        if cancel.is_cancelled() {
            return Err(cancelled_error());
        }
        let scale = req.scale;
        // Decoding, scaling and deflate are CPU work: off the async threads.
        let work = tokio::task::spawn_blocking(move || scale_png(&source, scale));
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled_error()),
            done = work => match done {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(ProviderError::transient(
                    "worker_shutting_down",
                    format!("the blocking task did not run: {e}"),
                )),
            },
        }
    }
}

fn scale_png(source: &[u8], scale: u32) -> Result<UpscaledImage, ProviderError> {
    let unreadable = |e: png::DecodingError| {
        ProviderError::permanent(
            "invalid_image",
            format!("the source is not a readable PNG: {e}"),
        )
    };
    let mut decoder = png::Decoder::new(Cursor::new(source));
    // 8 bits per sample, palettes expanded: one pixel = `samples` bytes.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(unreadable)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let side = |n: u32| n.checked_mul(scale).filter(|s| *s <= DEV_MAX_SIDE);
    let (Some(out_w), Some(out_h)) = (side(width), side(height)) else {
        return Err(ProviderError::permanent(
            "invalid_size",
            format!(
                "{width}x{height} × {scale} is over the dev upscaler's {DEV_MAX_SIDE} per side"
            ),
        ));
    };
    let size = reader.output_buffer_size().ok_or_else(|| {
        ProviderError::permanent("invalid_image", "the source PNG is too large to decode")
    })?;
    let mut pixels = vec![0; size];
    let frame = reader.next_frame(&mut pixels).map_err(unreadable)?;
    let px = frame.color_type.samples();
    let (scale, in_w) = (scale as usize, width as usize);
    let mut out = Vec::with_capacity(size * scale * scale);
    for row in pixels[..frame.buffer_size()].chunks_exact(frame.line_size) {
        let mut line = Vec::with_capacity(in_w * px * scale);
        for pixel in row[..in_w * px].chunks_exact(px) {
            for _ in 0..scale {
                line.extend_from_slice(pixel);
            }
        }
        for _ in 0..scale {
            out.extend_from_slice(&line);
        }
    }
    let encoded = encode(&out, out_w, out_h, frame.color_type).map_err(|e| {
        ProviderError::permanent(
            "encode_failed",
            format!("the PNG could not be written: {e}"),
        )
    })?;
    Ok(UpscaledImage {
        bytes: Bytes::from(encoded),
        content_type: "image/png".to_owned(),
        width: out_w,
        height: out_h,
    })
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: png::ColorType,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fastest);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpscaleProviderKind {
    /// Offline: nearest-neighbour, no network, no keys.
    #[default]
    Dev,
    /// fal.ai's queue API.
    Fal,
}

/// The `upscale` settings section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpscaleSettings {
    pub provider: UpscaleProviderKind,
    pub queue_base_url: String,
    /// Required with `provider = "fal"`.
    pub api_key: Option<SecretString>,
    /// The fal model, e.g. `fal-ai/esrgan` or `fal-ai/clarity-upscaler`.
    pub model_id: String,
    #[serde(with = "crate::config::millis")]
    pub poll_interval_ms: Duration,
    /// From submission to result; past it the request is cancelled at fal.
    #[serde(with = "crate::config::millis")]
    pub max_wait_ms: Duration,
    /// Per HTTP request (submit, each poll, result, download).
    #[serde(with = "crate::config::millis")]
    pub timeout_ms: Duration,
}

impl Default for UpscaleSettings {
    fn default() -> Self {
        UpscaleSettings {
            provider: UpscaleProviderKind::Dev,
            queue_base_url: DEFAULT_QUEUE_BASE_URL.to_owned(),
            api_key: None,
            model_id: DEFAULT_MODEL_ID.to_owned(),
            poll_interval_ms: Duration::from_secs(1),
            max_wait_ms: Duration::from_secs(600),
            timeout_ms: Duration::from_secs(30),
        }
    }
}

impl UpscaleSettings {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.provider == UpscaleProviderKind::Dev {
            return Ok(());
        }
        if self.api_key.is_none() {
            return Err("upscale.api_key: required when upscale.provider = \"fal\"".into());
        }
        match Url::parse(&self.queue_base_url) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => {}
            _ => {
                return Err(format!(
                    "upscale.queue_base_url: {:?} is not an http(s) URL",
                    self.queue_base_url
                ));
            }
        }
        let id = self.model_id.trim_matches('/');
        if id.is_empty() || id.contains(['?', '#', ' ']) {
            return Err(format!(
                "upscale.model_id: {:?} is not a fal model id (e.g. \"{DEFAULT_MODEL_ID}\")",
                self.model_id
            ));
        }
        for (name, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("max_wait_ms", self.max_wait_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if value.is_zero() {
                return Err(format!("upscale.{name}: must be above 0"));
            }
        }
        Ok(())
    }

    pub fn build(&self) -> Result<Arc<dyn Upscaler>, String> {
        self.validate()?;
        Ok(match self.provider {
            UpscaleProviderKind::Dev => Arc::new(DevUpscaler),
            UpscaleProviderKind::Fal => Arc::new(FalUpscaler::new(FalEndpoint {
                queue_base_url: self.queue_base_url.clone(),
                model_id: self.model_id.clone(),
                // Checked by validate() above.
                api_key: self
                    .api_key
                    .clone()
                    .unwrap_or_else(|| SecretString::from("")),
                timeout: self.timeout_ms,
                poll_interval: self.poll_interval_ms,
                max_wait: self.max_wait_ms,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_offline() {
        assert_eq!(UpscaleSettings::default().build().unwrap().name(), "dev");
    }

    #[test]
    fn fal_needs_a_key_a_url_and_a_model() {
        let mut settings = UpscaleSettings {
            provider: UpscaleProviderKind::Fal,
            ..Default::default()
        };
        assert_eq!(
            settings.validate().unwrap_err(),
            "upscale.api_key: required when upscale.provider = \"fal\""
        );
        settings.api_key = Some("fal-key".to_owned().into());
        assert_eq!(settings.build().unwrap().name(), "fal");
        settings.queue_base_url = "ftp://x".into();
        assert!(
            settings
                .validate()
                .unwrap_err()
                .starts_with("upscale.queue_base_url")
        );
        settings.queue_base_url = DEFAULT_QUEUE_BASE_URL.into();
        settings.model_id = "/".into();
        assert!(
            settings
                .validate()
                .unwrap_err()
                .starts_with("upscale.model_id")
        );
        settings.model_id = DEFAULT_MODEL_ID.into();
        settings.poll_interval_ms = Duration::ZERO;
        assert_eq!(
            settings.validate().unwrap_err(),
            "upscale.poll_interval_ms: must be above 0"
        );
    }

    #[test]
    fn settings_read_milliseconds_and_refuse_unknown_fields() {
        let settings: UpscaleSettings = serde_json::from_value(json!({
            "provider": "fal", "api_key": "k", "poll_interval_ms": 250, "max_wait_ms": 5000,
        }))
        .unwrap();
        assert_eq!(settings.provider, UpscaleProviderKind::Fal);
        assert_eq!(settings.poll_interval_ms, Duration::from_millis(250));
        assert_eq!(settings.max_wait_ms, Duration::from_secs(5));
        assert_eq!(settings.timeout_ms, Duration::from_secs(30));
        assert_eq!(settings.model_id, "fal-ai/esrgan");
        assert!(serde_json::from_value::<UpscaleSettings>(json!({ "scale": 2 })).is_err());
    }

    #[test]
    fn the_key_never_prints() {
        let settings = UpscaleSettings {
            api_key: Some("fal-very-secret".to_owned().into()),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("fal-very-secret"));
    }

    #[test]
    fn images_are_named_by_their_bytes() {
        assert_eq!(
            crate::providers::image_type(b"\x89PNG\r\n\x1a\nrest"),
            Some("image/png")
        );
        assert_eq!(
            crate::providers::image_type(&[0xff, 0xd8, 0xff, 0xe0]),
            Some("image/jpeg")
        );
        assert_eq!(
            crate::providers::image_type(b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(crate::providers::image_type(b"<html>"), None);
        assert_eq!(crate::providers::image_type(b"RIFF\0\0\0\0WAVE"), None);
    }

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
