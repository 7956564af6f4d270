//! [`Limited`]: a provider behind a rate limiter, implementing the
//! provider's own trait.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::RateLimiter;
use crate::{
    ProviderError,
    email::{EmailMessage, Mailer, SentMessage},
    images::{GeneratedImage, ImageGenerator, ImageRequest},
    moderation::{Decision, Moderator},
    sms::SmsSender,
    upscale::{UpscaleRequest, UpscaledImage, Upscaler},
};

/// Acquires a permit for `provider`, then runs `call` and frees the permit:
/// the whole wrapper pattern, for any provider trait. `call` is a future,
/// so it does not start before the permit is there.
pub async fn limited<T>(
    limiter: &dyn RateLimiter,
    provider: &str,
    call: impl Future<Output = Result<T, ProviderError>> + Send,
) -> Result<T, ProviderError> {
    let permit = limiter.acquire(provider).await?;
    let result = call.await;
    permit.release().await;
    result
}

/// A provider behind a rate limiter: implements the provider's own trait by
/// acquiring a permit for `key` before each call, so handlers keep holding
/// `Arc<dyn ImageGenerator>` and do not know about limits. Other provider
/// traits get the same wrapper with one `impl Trait for Limited<dyn Trait>`.
pub struct Limited<T: ?Sized> {
    inner: Arc<T>,
    limiter: Arc<dyn RateLimiter>,
    key: String,
}

impl<T: ?Sized> Limited<T> {
    /// `key` names the limit in `rate_limits.providers` (e.g. `openai_images`).
    pub fn new(inner: Arc<T>, limiter: Arc<dyn RateLimiter>, key: impl Into<String>) -> Self {
        Limited {
            inner,
            limiter,
            key: key.into(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

pub type LimitedGenerator = Limited<dyn ImageGenerator>;
pub type LimitedModerator = Limited<dyn Moderator>;

#[async_trait]
impl ImageGenerator for Limited<dyn ImageGenerator> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn generate(&self, req: &ImageRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.generate(req)).await
    }
}

#[async_trait]
impl Moderator for Limited<dyn Moderator> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn check_text(&self, text: &str) -> Result<Decision, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.check_text(text)).await
    }

    async fn check_image(&self, png: &[u8]) -> Result<Decision, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.check_image(png)).await
    }
}

#[async_trait]
impl Mailer for Limited<dyn Mailer> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn send(&self, msg: &EmailMessage) -> Result<SentMessage, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.send(msg)).await
    }
}

#[async_trait]
impl SmsSender for Limited<dyn SmsSender> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn send(&self, to: &str, body: &str) -> Result<SentMessage, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.send(to, body)).await
    }
}

#[async_trait]
impl Upscaler for Limited<dyn Upscaler> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn upscale(
        &self,
        req: &UpscaleRequest,
        cancel: &CancellationToken,
    ) -> Result<UpscaledImage, ProviderError> {
        limited(&*self.limiter, &self.key, self.inner.upscale(req, cancel)).await
    }
}
