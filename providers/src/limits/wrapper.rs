//! [`Limited`]: a provider behind a rate limiter, implementing the
//! provider's own trait.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    let span = super::call_span(provider);
    let permit = limiter.acquire(provider).instrument(span.clone()).await?;
    let started = std::time::Instant::now();
    let result = call.instrument(span.clone()).await;
    super::observe_call(provider, &result, started.elapsed());
    super::record_outcome(&span, &result);
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::limits::{CallOutcome, LocalLimiter, observe_calls_with};

    static SEEN: Mutex<Vec<(String, CallOutcome)>> = Mutex::new(Vec::new());

    fn note(provider: &str, outcome: CallOutcome, _: std::time::Duration) {
        SEEN.lock().unwrap().push((provider.to_owned(), outcome));
    }

    #[tokio::test]
    async fn each_call_reports_its_provider_and_outcome() {
        observe_calls_with(note);
        let limiter = LocalLimiter::new(Default::default());
        let ok: Result<u8, ProviderError> = limited(&limiter, "email", async { Ok(1) }).await;
        assert!(ok.is_ok());
        let _ = limited::<u8>(&limiter, "sms", async {
            Err(ProviderError::transient("timeout", "no answer"))
        })
        .await;
        let _ = limited::<u8>(&limiter, "openai_images", async {
            Err(ProviderError::permanent("bad_request", "refused"))
        })
        .await;
        assert_eq!(
            *SEEN.lock().unwrap(),
            [
                ("email".to_owned(), CallOutcome::Ok),
                ("sms".to_owned(), CallOutcome::Retryable),
                ("openai_images".to_owned(), CallOutcome::Refused),
            ]
        );
    }
}
