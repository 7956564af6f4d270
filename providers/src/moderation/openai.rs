//! Moderation against an OpenAI-compatible `/v1/moderations`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Decision, Moderator};
use crate::{
    ProviderError, http,
    openai::{OpenAiEndpoint, PROVIDER, post_json},
};

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
        let mime = crate::image_type(image).unwrap_or("image/png");
        let url = format!("data:{mime};base64,{}", BASE64.encode(image));
        self.moderate(json!({ "type": "image_url", "image_url": { "url": url } }))
            .await
    }
}
