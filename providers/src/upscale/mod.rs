//! Upscaling: the [`Upscaler`] trait, the `[upscale]` settings section
//! that picks one (`dev`, offline nearest-neighbour, the embedded default;
//! or `fal`, fal.ai's queue API), and both implementations.

pub mod dev;
pub mod fal;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::ProviderError;

pub use dev::{DEV_MAX_SCALE, DEV_MAX_SIDE, DevUpscaler};
pub use fal::{DEFAULT_MODEL_ID, DEFAULT_QUEUE_BASE_URL, FalEndpoint, FalUpscaler};

/// Makes an image larger (fal.ai's queue API, or the offline `dev`
/// nearest-neighbour scaler).
#[async_trait]
pub trait Upscaler: Send + Sync + 'static {
    /// Recorded with each result: which provider upscaled it.
    fn name(&self) -> &'static str;
    /// The upscaled image, or an error. When `cancel` fires while the
    /// provider still queues or runs the request, the provider is told to
    /// drop it and the answer is `Permanent` with code `cancelled`.
    async fn upscale(
        &self,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<UpscaledImage, ProviderError>;
}

/// Only the image and the factor: nothing about who asked leaves kiln.
#[derive(Clone, PartialEq, Eq)]
pub struct UpscaleRequest {
    /// A signed URL of the source image in kiln's own storage (never a URL
    /// the user gave). Real providers fetch it themselves.
    pub image_url: String,
    /// Output side = input side × `scale`.
    pub scale: u32,
    /// The source PNG, for the offline `dev` upscaler only (it cannot fetch
    /// `image_url` without a server); real providers ignore it.
    pub source_png: Option<Bytes>,
}

/// Neither the signature of `image_url` nor megabytes of PNG belong in
/// logs: prints the URL without its query string and the source's size.
impl fmt::Debug for UpscaleRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.image_url.split(['?', '#']).next().unwrap_or_default();
        let mut s = f.debug_struct("UpscaleRequest");
        s.field("image_url", &url).field("scale", &self.scale);
        match &self.source_png {
            Some(png) => s.field("source_png", &format_args!("<{} bytes>", png.len())),
            None => s.field("source_png", &None::<()>),
        };
        s.finish()
    }
}

/// The upscaled image as the provider made it (PNG, JPEG or WebP, named by
/// `content_type`), with its size.
#[derive(Clone, PartialEq, Eq)]
pub struct UpscaledImage {
    pub bytes: Bytes,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

/// Prints the size instead of the bytes.
impl fmt::Debug for UpscaledImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpscaledImage")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("content_type", &self.content_type)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// What an upscale cancelled by the caller ends with.
pub(crate) fn cancelled_error() -> ProviderError {
    ProviderError::permanent("cancelled", "the upscale was cancelled")
}

/// Which upscaler runs (`upscale.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Offline: nearest-neighbour, no network, no keys.
    #[default]
    Dev,
    /// fal.ai's queue API.
    Fal,
}

/// The `[upscale]` settings section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpscaleSettings {
    pub provider: Provider,
    pub queue_base_url: String,
    /// Required with `provider = "fal"`.
    pub api_key: Option<SecretString>,
    /// The fal model, e.g. `fal-ai/esrgan` or `fal-ai/clarity-upscaler`.
    pub model_id: String,
    #[serde(with = "crate::settings::millis")]
    pub poll_interval_ms: Duration,
    /// From submission to result; past it the request is cancelled at fal.
    #[serde(with = "crate::settings::millis")]
    pub max_wait_ms: Duration,
    /// Per HTTP request (submit, each poll, result, download).
    #[serde(with = "crate::settings::millis")]
    pub timeout_ms: Duration,
}

impl Default for UpscaleSettings {
    fn default() -> Self {
        UpscaleSettings {
            provider: Provider::Dev,
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
        if self.provider == Provider::Dev {
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
            Provider::Dev => Arc::new(DevUpscaler),
            Provider::Fal => Arc::new(FalUpscaler::new(FalEndpoint {
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
    use serde_json::json;

    use super::*;

    #[test]
    fn the_default_is_offline() {
        assert_eq!(UpscaleSettings::default().build().unwrap().name(), "dev");
    }

    #[test]
    fn fal_needs_a_key_a_url_and_a_model() {
        let mut settings = UpscaleSettings {
            provider: Provider::Fal,
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
        assert_eq!(settings.provider, Provider::Fal);
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
    fn upscale_debug_omits_bytes_and_signatures() {
        let req = UpscaleRequest {
            image_url: "https://kiln.example/v1/files/a.png?exp=1&sig=secret".to_owned(),
            scale: 2,
            source_png: Some(Bytes::from(vec![0u8; 10])),
        };
        assert_eq!(
            format!("{req:?}"),
            "UpscaleRequest { image_url: \"https://kiln.example/v1/files/a.png\", scale: 2, \
             source_png: <10 bytes> }"
        );
        let image = UpscaledImage {
            bytes: Bytes::from(vec![0u8; 2048]),
            content_type: "image/png".to_owned(),
            width: 16,
            height: 12,
        };
        assert_eq!(
            format!("{image:?}"),
            "UpscaledImage { bytes: <2048 bytes>, content_type: \"image/png\", width: 16, \
             height: 12 }"
        );
    }
}
