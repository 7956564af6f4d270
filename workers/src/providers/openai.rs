//! OpenAI-compatible image generation (`/v1/images/generations`, and
//! `/v1/images/edits` when reference images are given) and moderation
//! (`/v1/moderations`). Requests carry only the prompt, the output shape
//! and image URLs or bytes: no `user` field, nothing that names a person (P8).

use std::{collections::BTreeMap, io::Cursor, time::Duration};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use reqwest::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Decision, GeneratedImage, ImageGenerator, ImageRequest, Moderator, ProviderError, http,
};

const PROVIDER: &str = "openai";

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
async fn failure(response: Response) -> ProviderError {
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

async fn post_json(
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

/// Image generation against an OpenAI-compatible server.
pub struct OpenAiImages {
    client: reqwest::Client,
    endpoint: OpenAiEndpoint,
    /// `quality` as the server names it (`low`, `medium`, `high`, `auto`);
    /// not sent when unset, so servers that do not know it still answer.
    quality: Option<String>,
}

impl OpenAiImages {
    pub fn new(endpoint: OpenAiEndpoint, quality: Option<String>) -> OpenAiImages {
        OpenAiImages {
            client: http::client(endpoint.timeout),
            endpoint,
            quality,
        }
    }
}

#[derive(Deserialize)]
struct ImagesResponse {
    data: Vec<ImageData>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
    url: Option<String>,
}

#[async_trait]
impl ImageGenerator for OpenAiImages {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn generate(&self, req: &ImageRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
        let mut body = json!({
            "model": req.model,
            "prompt": req.prompt,
            "n": req.n,
            "size": format!("{}x{}", req.width, req.height),
            "output_format": "png",
        });
        if let Some(quality) = &self.quality {
            body["quality"] = json!(quality);
        }
        let path = if req.reference_urls.is_empty() {
            "/v1/images/generations"
        } else {
            body["images"] = req
                .reference_urls
                .iter()
                .map(|url| json!({ "image_url": url }))
                .collect();
            "/v1/images/edits"
        };
        let answer = post_json(&self.client, &self.endpoint, path, &body).await?;
        let answer: ImagesResponse = serde_json::from_value(answer).map_err(|e| {
            ProviderError::transient(
                "invalid_response",
                format!("{PROVIDER} sent an unexpected answer: {e}"),
            )
        })?;
        if answer.data.len() != req.n as usize {
            return Err(ProviderError::transient(
                "incomplete_response",
                format!(
                    "{PROVIDER} returned {} of {} images",
                    answer.data.len(),
                    req.n
                ),
            ));
        }
        let mut images = Vec::with_capacity(answer.data.len());
        for item in answer.data {
            let png = match (item.b64_json, item.url) {
                (Some(b64), _) => Bytes::from(BASE64.decode(b64.trim()).map_err(|e| {
                    ProviderError::transient(
                        "invalid_response",
                        format!("{PROVIDER} sent an image that is not base64: {e}"),
                    )
                })?),
                // A `url` result expires within the hour: fetch it now.
                (None, Some(url)) => {
                    http::download_image(&self.client, PROVIDER, &url, "the generated image")
                        .await?
                }
                (None, None) => {
                    return Err(ProviderError::transient(
                        "invalid_response",
                        format!("{PROVIDER} sent an image with neither b64_json nor url"),
                    ));
                }
            };
            let (width, height) = png_size(&png)?;
            images.push(GeneratedImage { png, width, height });
        }
        Ok(images)
    }
}

/// The size the provider actually produced, read from the PNG header; also
/// refuses anything that is not a PNG before it is stored.
fn png_size(bytes: &[u8]) -> Result<(u32, u32), ProviderError> {
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(|e| {
            ProviderError::transient(
                "invalid_image",
                format!("{PROVIDER} sent an image that is not a readable PNG: {e}"),
            )
        })?;
    let info = reader.info();
    Ok((info.width, info.height))
}

/// Moderation against an OpenAI-compatible `/v1/moderations`.
pub struct OpenAiModerator {
    client: reqwest::Client,
    endpoint: OpenAiEndpoint,
    model: String,
    /// Category -> score at or above which the input is blocked even when
    /// the provider did not flag it (stricter policy than the provider's).
    thresholds: BTreeMap<String, f64>,
}

impl OpenAiModerator {
    pub fn new(
        endpoint: OpenAiEndpoint,
        model: String,
        thresholds: BTreeMap<String, f64>,
    ) -> OpenAiModerator {
        OpenAiModerator {
            client: http::client(endpoint.timeout),
            endpoint,
            model,
            thresholds,
        }
    }

    async fn moderate(&self, input: Value) -> Result<Decision, ProviderError> {
        let body = json!({ "model": self.model, "input": [input] });
        let answer = post_json(&self.client, &self.endpoint, "/v1/moderations", &body).await?;
        let answer: ModerationResponse = serde_json::from_value(answer).map_err(|e| {
            ProviderError::transient(
                "invalid_response",
                format!("{PROVIDER} sent an unexpected moderation answer: {e}"),
            )
        })?;
        let result = answer.results.into_iter().next().ok_or_else(|| {
            ProviderError::transient(
                "invalid_response",
                format!("{PROVIDER} sent a moderation answer with no result"),
            )
        })?;
        Ok(self.decide(result))
    }

    fn decide(&self, result: ModerationResult) -> Decision {
        let mut categories: Vec<String> = result
            .categories
            .iter()
            .filter(|(_, flagged)| **flagged)
            .map(|(name, _)| name.clone())
            .collect();
        for (name, threshold) in &self.thresholds {
            if result
                .category_scores
                .get(name)
                .is_some_and(|score| score >= threshold)
                && !categories.contains(name)
            {
                categories.push(name.clone());
            }
        }
        categories.sort();
        Decision {
            allowed: !result.flagged && categories.is_empty(),
            categories,
            scores: result.category_scores,
        }
    }
}

#[derive(Deserialize)]
struct ModerationResponse {
    results: Vec<ModerationResult>,
}

#[derive(Deserialize)]
struct ModerationResult {
    flagged: bool,
    #[serde(default)]
    categories: BTreeMap<String, bool>,
    #[serde(default)]
    category_scores: BTreeMap<String, f64>,
}

#[async_trait]
impl Moderator for OpenAiModerator {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn check_text(&self, text: &str) -> Result<Decision, ProviderError> {
        self.moderate(json!({ "type": "text", "text": text })).await
    }

    /// The image goes inline as a data URL: generated images are not yet
    /// visible anywhere, and no URL of ours has to be reachable from the
    /// provider.
    async fn check_image(&self, image: &[u8]) -> Result<Decision, ProviderError> {
        // Upscalers and reference images may be JPEG, WebP or GIF: label
        // the bytes as what they are.
        let mime = super::image_type(image).unwrap_or("image/png");
        let url = format!("data:{mime};base64,{}", BASE64.encode(image));
        self.moderate(json!({ "type": "image_url", "image_url": { "url": url } }))
            .await
    }
}
