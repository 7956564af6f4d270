//! The external parties handlers call, each a small trait with a real
//! client and an offline `dev` implementation. Handlers hold them as
//! `Arc<dyn Trait>`, picked by configuration, so a handler never knows
//! which one it talks to and tests can swap in fakes.

pub mod config;
pub mod dev;
pub mod email;
pub mod fal;
pub mod fetch;
pub mod http;
pub mod limits;
mod message;
pub mod openai;
pub mod sms;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kiln_jobs::JobError;
use tokio_util::sync::CancellationToken;

pub use dev::{DEFAULT_BLOCKED_WORDS, DevGenerator, DevModerator};
pub use fal::{DevUpscaler, FalUpscaler};

/// The image format from the first bytes, if it is one kiln accepts:
/// what a file is, whatever a server's `Content-Type` said.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

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

/// Judges prompts before generation and images after it (OpenAI-compatible
/// `/v1/moderations`, or the offline keyword list). Nothing generated is
/// shown before `check_image` allows it.
#[async_trait]
pub trait Moderator: Send + Sync + 'static {
    /// Recorded with each decision.
    fn name(&self) -> &'static str;
    async fn check_text(&self, text: &str) -> Result<Decision, ProviderError>;
    async fn check_image(&self, png: &[u8]) -> Result<Decision, ProviderError>;
}

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

/// A moderation verdict, stored as given: `categories` are the flagged
/// ones, `scores` may cover every category the moderator knows (0.0–1.0),
/// so policy thresholds can be tuned later against what was logged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub categories: Vec<String>,
    pub scores: BTreeMap<String, f64>,
}

/// A provider call that did not produce an answer. The variant is the
/// retry decision, made where the wire format is understood: `Transient`
/// (429 rate limit, 408/409/5xx, timeouts, resets) retries, honouring the
/// provider's `Retry-After`; `Permanent` (bad input, content blocked, quota
/// exhausted, auth) fails the job at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("{code}: {message}")]
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl ProviderError {
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Transient {
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            ProviderError::Transient { code, .. } | ProviderError::Permanent { code, .. } => code,
        }
    }
}

/// One to one: the provider already decided whether retrying can help.
impl From<ProviderError> for JobError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Transient {
                code,
                message,
                retry_after,
            } => JobError::Transient {
                code,
                message,
                retry_after,
            },
            ProviderError::Permanent { code, message } => JobError::Permanent { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn provider_errors_keep_their_retry_decision_as_job_errors() {
        let transient = ProviderError::Transient {
            code: "rate_limit_exceeded".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            JobError::from(transient),
            JobError::Transient {
                code: "rate_limit_exceeded".into(),
                message: "slow down".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }
        );

        let permanent = ProviderError::permanent("content_blocked", "moderation_blocked");
        let job: JobError = permanent.into();
        assert!(job.is_permanent());
        assert_eq!(job.code(), "content_blocked");
        assert_eq!(job.message(), "moderation_blocked");
    }

    #[test]
    fn error_display_is_code_and_message() {
        let e = ProviderError::transient("server_error", "502 from upstream");
        assert_eq!(e.to_string(), "server_error: 502 from upstream");
        assert_eq!(e.code(), "server_error");
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

    #[test]
    fn providers_are_usable_as_trait_objects() {
        let generator: Arc<dyn ImageGenerator> = Arc::new(DevGenerator);
        let moderator: Arc<dyn Moderator> = Arc::new(DevModerator::default());
        let upscaler: Arc<dyn Upscaler> = Arc::new(DevUpscaler);
        assert_eq!(generator.name(), "dev");
        assert_eq!(moderator.name(), "dev");
        assert_eq!(upscaler.name(), "dev");
    }

    #[test]
    fn decision_round_trips_as_json() {
        let decision = Decision {
            allowed: false,
            categories: vec!["violence".into()],
            scores: BTreeMap::from([("violence".into(), 0.93)]),
        };
        let json = serde_json::to_string(&decision).unwrap();
        assert_eq!(
            json,
            r#"{"allowed":false,"categories":["violence"],"scores":{"violence":0.93}}"#
        );
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), decision);
    }
}
