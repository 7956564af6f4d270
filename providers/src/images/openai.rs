//! Image generation against an OpenAI-compatible server:
//! `/v1/images/generations`, and `/v1/images/edits` when reference images
//! are given.

use std::io::Cursor;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{GeneratedImage, ImageGenerator, ImageRequest};
use crate::{
    ProviderError, http,
    openai::{OpenAiEndpoint, PROVIDER, post_json},
};

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
