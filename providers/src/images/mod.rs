//! Image generation: the [`ImageGenerator`] trait, the `[images]` settings
//! section that picks one (`dev`, offline, the embedded default; or
//! `openai`, any OpenAI-compatible server), and both implementations.

pub mod dev;
pub mod openai;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use secrecy::SecretString;
use serde::Deserialize;

use crate::ProviderError;

pub use dev::DevGenerator;
pub use openai::OpenAiImages;

/// Turns a prompt into images (OpenAI-compatible `/v1/images/generations`,
/// or the offline `dev` renderer).
#[async_trait]
pub trait ImageGenerator: Send + Sync + 'static {
    /// Recorded with each generation: which provider made the images.
    fn name(&self) -> &'static str;
    /// All `req.n` images or an error: a partial answer is an error the
    /// job retries as a whole.
    async fn generate(&self, req: &ImageRequest) -> Result<Vec<GeneratedImage>, ProviderError>;
}

/// Only what the provider needs: the prompt and the shape of the output,
/// never who asked (no account-identifying data leaves kiln).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub prompt: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    /// How many images; providers cap it (OpenAI: 10).
    pub n: u32,
    /// Signed URLs of reference images re-hosted in kiln's own storage
    /// (never the URL the user gave); empty for a plain generation.
    pub reference_urls: Vec<String>,
}

/// One image as PNG bytes, with the size the provider actually produced
/// (it may differ from the request, e.g. `size: "auto"`).
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    pub png: Bytes,
    pub width: u32,
    pub height: u32,
}

/// Prints the size instead of megabytes of PNG.
impl fmt::Debug for GeneratedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedImage")
            .field("png", &format_args!("<{} bytes>", self.png.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// Which image generator runs (`images.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Offline: no network, no keys.
    #[default]
    Dev,
    /// An OpenAI-compatible HTTP API.
    OpenAi,
}

/// The `[images]` settings section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesSettings {
    pub provider: Provider,
    /// Base URL of the OpenAI-compatible server (paths start with `/v1/`).
    pub base_url: String,
    /// Required with `provider = "openai"`.
    pub api_key: Option<SecretString>,
    /// `quality` sent with each request (`low`, `medium`, `high`, `auto`);
    /// unset: the server's default.
    pub quality: Option<String>,
    /// Whole request, including the image bytes.
    #[serde(with = "crate::settings::millis")]
    pub timeout_ms: Duration,
}

impl Default for ImagesSettings {
    fn default() -> Self {
        ImagesSettings {
            provider: Provider::Dev,
            base_url: "https://api.openai.com".to_owned(),
            api_key: None,
            quality: None,
            timeout_ms: Duration::from_secs(120),
        }
    }
}

impl ImagesSettings {
    pub fn validate(&self) -> Result<(), String> {
        match self.provider {
            Provider::Dev => Ok(()),
            Provider::OpenAi => {
                crate::openai::validate_settings("images", &self.base_url, &self.api_key)
            }
        }
    }

    pub fn build(&self) -> Result<Arc<dyn ImageGenerator>, String> {
        self.validate()?;
        Ok(match self.provider {
            Provider::Dev => Arc::new(DevGenerator),
            Provider::OpenAi => Arc::new(OpenAiImages::new(
                crate::openai::endpoint(&self.base_url, &self.api_key, self.timeout_ms),
                self.quality.clone(),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_offline() {
        assert_eq!(ImagesSettings::default().build().unwrap().name(), "dev");
    }

    #[test]
    fn openai_needs_a_key_and_a_url() {
        let mut images = ImagesSettings {
            provider: Provider::OpenAi,
            ..Default::default()
        };
        assert_eq!(
            images.validate().unwrap_err(),
            "images.api_key: required when images.provider = \"openai\""
        );
        images.api_key = Some("sk-x".to_owned().into());
        assert_eq!(images.build().unwrap().name(), "openai");
        images.base_url = "ftp://x".into();
        assert!(
            images
                .validate()
                .unwrap_err()
                .starts_with("images.base_url")
        );
    }

    #[test]
    fn the_key_never_prints() {
        let images = ImagesSettings {
            api_key: Some("sk-very-secret".to_owned().into()),
            ..Default::default()
        };
        assert!(!format!("{images:?}").contains("sk-very-secret"));
    }

    #[test]
    fn generated_image_debug_omits_the_bytes() {
        let image = GeneratedImage {
            png: Bytes::from(vec![0u8; 4096]),
            width: 64,
            height: 64,
        };
        assert_eq!(
            format!("{image:?}"),
            "GeneratedImage { png: <4096 bytes>, width: 64, height: 64 }"
        );
    }
}
