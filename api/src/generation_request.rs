//! A generation as a client asks for it, parsed once into values that are
//! valid by construction: a route (or a batch of them) checks nothing
//! itself, it parses the body and uses what comes out.

use kiln_store::generations::{GenerationInput, NewGeneration, NewGenerationBatch};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::{
    ApiConfig, Problem,
    config::{CreditsConfig, parse_size},
};

/// The body of `POST /v1/generations`, as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// What to draw; 1 to `api.max_prompt_chars` characters.
    pub prompt: String,
    /// One of `api.models`; default `api.default_model`.
    pub model: Option<String>,
    /// `WIDTHxHEIGHT`, one of `api.sizes`; default `1024x1024`.
    pub size: Option<String>,
    /// Images to make, 1 to `api.max_images`; default 1.
    pub n: Option<u32>,
    /// Up to `api.max_reference_images` https URLs of images to start
    /// from. kiln fetches each once (public addresses only, no redirects,
    /// images only, size-capped) and gives the provider its own copy.
    pub reference_image_urls: Option<Vec<String>>,
    /// An https URL that hears of this job: a signed POST (Standard
    /// Webhooks) when it completes. Its host must resolve to public
    /// addresses only; needs a signing secret (`POST /v1/me/webhook-secret`).
    pub webhook_url: Option<String>,
    /// `completed` (default): the terminal event only; `all`: every change
    /// of state or stage too.
    #[schema(value_type = Option<String>, example = "completed")]
    pub webhook_events: Option<kiln_jobs::WebhookEvents>,
    /// Jobs that follow its success, enqueued with it in one transaction
    /// as its children (`parent_id`): `{"upscale": {"scale": 2}}` upscales
    /// each delivered image. Their price is reserved up front with the
    /// generation's, and handed back for images that are not delivered.
    pub then: Option<ThenRequest>,
}

/// `then` of a generation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThenRequest {
    pub upscale: Option<ThenUpscale>,
}

/// `then.upscale`: an upscale of each delivered image.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThenUpscale {
    /// 2 or 4; default 2.
    pub scale: Option<u32>,
}

/// The longest reference URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// The size a request gets when it names none.
const DEFAULT_SIZE: &str = "1024x1024";

/// Why a generation request was refused; the text is the problem's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGeneration {
    #[error("prompt must not be empty")]
    EmptyPrompt,
    #[error("prompt is longer than {max} characters")]
    PromptTooLong { max: usize },
    #[error("model must be one of {models:?}")]
    UnknownModel { models: Vec<String> },
    #[error("size must be one of {sizes:?}")]
    UnknownSize { sizes: Vec<String> },
    #[error("n must be between 1 and {max}")]
    BadCount { max: u32 },
    #[error("at most {max} reference_image_urls")]
    TooManyReferences { max: usize },
    #[error("reference_image_urls must be http(s) URLs of at most {MAX_URL_LEN} characters")]
    BadReferenceUrl,
    #[error(
        "then.upscale.scale must be one of {:?}",
        kiln_jobs::UpscaleImage::SCALES
    )]
    BadThenScale,
}

impl From<InvalidGeneration> for Problem {
    fn from(e: InvalidGeneration) -> Problem {
        Problem::invalid(e.to_string())
    }
}

/// A prompt: trimmed, not empty, at most `api.max_prompt_chars` characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt(String);

impl Prompt {
    pub fn parse(text: &str, max_chars: usize) -> Result<Prompt, InvalidGeneration> {
        let prompt = text.trim();
        if prompt.is_empty() {
            return Err(InvalidGeneration::EmptyPrompt);
        }
        if prompt.chars().count() > max_chars {
            return Err(InvalidGeneration::PromptTooLong { max: max_chars });
        }
        Ok(Prompt(prompt.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One of the configured image sizes, as written (`1024x768`) and as
/// numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    text: String,
    width: u32,
    height: u32,
}

impl Size {
    pub fn parse(text: &str, allowed: &[String]) -> Result<Size, InvalidGeneration> {
        match parse_size(text) {
            Some((width, height)) if allowed.iter().any(|s| s == text) => Ok(Size {
                text: text.to_owned(),
                width,
                height,
            }),
            _ => Err(InvalidGeneration::UnknownSize {
                sizes: allowed.to_vec(),
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }
}

/// An http(s) URL with a host, at most [`MAX_URL_LEN`] characters. Only
/// its form is known here; workers fetch it under their own guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceUrl(String);

impl ReferenceUrl {
    pub fn parse(text: &str) -> Result<ReferenceUrl, InvalidGeneration> {
        let parsed = url::Url::parse(text).ok();
        let web = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
        if !web || text.len() > MAX_URL_LEN {
            return Err(InvalidGeneration::BadReferenceUrl);
        }
        Ok(ReferenceUrl(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A generation request with every field valid under the API's settings,
/// defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationSpec {
    pub prompt: Prompt,
    /// One of `api.models`.
    pub model: String,
    pub size: Size,
    /// 1 to `api.max_images`.
    pub n: u32,
    /// At most `api.max_reference_images`.
    pub reference_urls: Vec<ReferenceUrl>,
    /// As asked: checked by [`crate::webhook::target`] before it goes in.
    pub webhook_url: Option<String>,
    pub webhook_events: Option<kiln_jobs::WebhookEvents>,
    /// The checked registration, once the route has it.
    pub webhook: Option<kiln_store::WebhookTarget>,
    /// `then.upscale.scale`: each delivered image is upscaled so.
    pub then_upscale: Option<u32>,
}

impl GenerationRequest {
    /// Checks the fields in order (prompt, model, size, n, reference URLs)
    /// and refuses with the first one that is wrong.
    pub fn parse(self, config: &ApiConfig) -> Result<GenerationSpec, InvalidGeneration> {
        let prompt = Prompt::parse(&self.prompt, config.max_prompt_chars)?;
        let model = self.model.unwrap_or_else(|| config.default_model.clone());
        if !config.models.contains(&model) {
            return Err(InvalidGeneration::UnknownModel {
                models: config.models.clone(),
            });
        }
        let size = Size::parse(self.size.as_deref().unwrap_or(DEFAULT_SIZE), &config.sizes)?;
        let n = self.n.unwrap_or(1);
        if !(1..=config.max_images).contains(&n) {
            return Err(InvalidGeneration::BadCount {
                max: config.max_images,
            });
        }
        let urls = self.reference_image_urls.unwrap_or_default();
        if urls.len() > config.max_reference_images {
            return Err(InvalidGeneration::TooManyReferences {
                max: config.max_reference_images,
            });
        }
        let reference_urls = urls
            .iter()
            .map(|url| ReferenceUrl::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        let then_upscale = match self.then.and_then(|t| t.upscale) {
            Some(upscale) => {
                let scale = upscale.scale.unwrap_or(2);
                if !kiln_jobs::UpscaleImage::SCALES.contains(&scale) {
                    return Err(InvalidGeneration::BadThenScale);
                }
                Some(scale)
            }
            None => None,
        };
        Ok(GenerationSpec {
            prompt,
            model,
            size,
            n,
            reference_urls,
            webhook_url: self.webhook_url,
            webhook_events: self.webhook_events,
            webhook: None,
            then_upscale,
        })
    }
}

impl GenerationSpec {
    /// Checks the webhook the request asked for (see
    /// [`crate::webhook::target`]) and keeps it.
    pub async fn check_webhook(
        &mut self,
        state: &crate::AppState,
        owner: kiln_jobs::UserId,
    ) -> Result<(), Problem> {
        self.webhook = crate::webhook::target(
            state,
            owner,
            self.webhook_url.as_deref(),
            self.webhook_events,
        )
        .await?;
        Ok(())
    }

    /// SHA-256 (hex) of the canonical request, to tell an idempotent retry
    /// from a different request under the same key. Stored with the
    /// generation: its input must stay the same across releases.
    pub fn request_hash(&self) -> String {
        let mut canonical = serde_json::json!({
            "prompt": self.prompt.as_str(),
            "model": self.model,
            "size": self.size.as_str(),
            "n": self.n,
            "reference_image_urls": self.reference_urls.iter().map(ReferenceUrl::as_str).collect::<Vec<_>>(),
        });
        // Only when asked for, so requests without one hash as before.
        if let Some(hook) = &self.webhook {
            canonical["webhook_url"] = hook.url.clone().into();
            canonical["webhook_events"] = hook.events.as_str().into();
        }
        if let Some(scale) = self.then_upscale {
            canonical["then"] = serde_json::json!({"upscale": {"scale": scale}});
        }
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// What the store records of this request, priced by `credits`.
    pub fn into_input(self, credits: &CreditsConfig) -> GenerationInput {
        let request_hash = self.request_hash();
        GenerationInput {
            credits: credits.images(self.size.as_str(), self.n),
            prompt: self.prompt.0,
            model: self.model,
            width: self.size.width,
            height: self.size.height,
            n: self.n,
            reference_urls: self.reference_urls.into_iter().map(|u| u.0).collect(),
            request_hash,
            webhook: self.webhook,
            traceparent: kiln_store::trace::traceparent(),
            then: self.then_upscale.map(|scale| kiln_jobs::FollowUps {
                upscale: Some(kiln_jobs::UpscaleEach {
                    scale,
                    credits: credits.upscale(scale),
                }),
            }),
        }
    }

    /// The store's record of this request for `owner`.
    pub fn into_new_generation(
        self,
        owner: kiln_jobs::UserId,
        idempotency_key: Option<String>,
        credits: &CreditsConfig,
    ) -> NewGeneration {
        NewGeneration {
            owner,
            input: self.into_input(credits),
            idempotency_key,
        }
    }
}

/// The most generations one batch request may ask for.
pub const MAX_BATCH_ITEMS: usize = 100;

/// The body of `POST /v1/generations/batch`, as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationBatchRequest {
    /// 1 to 100 generations, each as the body of `POST /v1/generations`.
    pub items: Vec<GenerationRequest>,
}

impl GenerationBatchRequest {
    /// Parses every item; refuses with the first wrong one, named by its
    /// position (`items[3]: prompt must not be empty`).
    pub fn parse(self, config: &ApiConfig) -> Result<Vec<GenerationSpec>, Problem> {
        if self.items.is_empty() || self.items.len() > MAX_BATCH_ITEMS {
            return Err(Problem::invalid(format!(
                "items must hold 1 to {MAX_BATCH_ITEMS} generations"
            )));
        }
        self.items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                item.parse(config)
                    .map_err(|e| Problem::invalid(format!("items[{i}]: {e}")))
            })
            .collect()
    }
}

/// The store's record of a parsed batch for `owner`. Its hash covers every
/// item's hash in order, so a retry must repeat the same batch.
pub fn new_generation_batch(
    specs: Vec<GenerationSpec>,
    owner: kiln_jobs::UserId,
    idempotency_key: Option<String>,
    credits: &CreditsConfig,
) -> NewGenerationBatch {
    let items: Vec<GenerationInput> = specs
        .into_iter()
        .map(|spec| spec.into_input(credits))
        .collect();
    let mut hasher = Sha256::new();
    for item in &items {
        hasher.update(item.request_hash.as_bytes());
    }
    NewGenerationBatch {
        owner,
        items,
        request_hash: hex::encode(hasher.finalize()),
        idempotency_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str) -> GenerationRequest {
        GenerationRequest {
            prompt: prompt.to_owned(),
            model: None,
            size: None,
            n: None,
            reference_image_urls: None,
            webhook_url: None,
            webhook_events: None,
            then: None,
        }
    }

    #[test]
    fn defaults_fill_in_and_the_prompt_is_trimmed() {
        let spec = request("  a lighthouse \n")
            .parse(&ApiConfig::default())
            .unwrap();
        assert_eq!(spec.prompt.as_str(), "a lighthouse");
        assert_eq!(spec.model, "dev-image-1");
        assert_eq!(
            (spec.size.as_str(), spec.size.width(), spec.size.height()),
            ("1024x1024", 1024, 1024)
        );
        assert_eq!(spec.n, 1);
        assert!(spec.reference_urls.is_empty());
    }

    #[test]
    fn the_first_wrong_field_is_named() {
        let config = ApiConfig::default();
        let mut bad = request(" ");
        bad.size = Some("3x3".into());
        assert_eq!(
            bad.parse(&config).unwrap_err(),
            InvalidGeneration::EmptyPrompt
        );
        let mut bad = request("ok");
        bad.size = Some("3x3".into());
        bad.n = Some(0);
        assert_eq!(
            bad.parse(&config).unwrap_err().to_string(),
            format!("size must be one of {:?}", config.sizes)
        );
        let mut bad = request("ok");
        bad.reference_image_urls = Some(vec!["ftp://example.com/a.png".into()]);
        assert_eq!(
            bad.parse(&config).unwrap_err().to_string(),
            "reference_image_urls must be http(s) URLs of at most 2048 characters"
        );
    }

    #[test]
    fn the_request_hash_reads_the_canonical_fields() {
        let config = ApiConfig::default();
        let spec = request("a lighthouse").parse(&config).unwrap();
        let canonical = serde_json::json!({
            "prompt": "a lighthouse", "model": "dev-image-1", "size": "1024x1024", "n": 1,
            "reference_image_urls": Vec::<String>::new(),
        });
        assert_eq!(
            spec.request_hash(),
            hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
        );
    }
}
