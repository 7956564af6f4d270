//! [`ProviderSettings`]: every provider section together with the shared
//! rate limits, and the one builder that turns them into providers behind
//! the limiter.

use std::sync::Arc;

use crate::{
    email::{EmailSettings, Mailer},
    fetch::{FetchPolicy, GuardedFetcher},
    images::{ImageGenerator, ImagesSettings},
    limits::{Limited, RateLimitSettings},
    moderation::{ModerationSettings, Moderator},
    sms::{SmsSender, SmsSettings},
    upscale::{UpscaleSettings, Upscaler},
};

/// Every provider section, as the binary's settings hold them.
#[derive(Clone, Default)]
pub struct ProviderSettings {
    pub images: ImagesSettings,
    pub moderation: ModerationSettings,
    pub upscale: UpscaleSettings,
    pub email: EmailSettings,
    pub sms: SmsSettings,
    pub rate_limits: RateLimitSettings,
    /// How reference images from clients are fetched (`[reference_images]`).
    pub reference_images: FetchPolicy,
    /// How clients' webhooks are delivered (`[webhooks]`).
    pub webhooks: crate::webhook::WebhookSettings,
}

/// The limiter and metrics key of each provider: its settings section.
pub const PROVIDER_KEYS: [&str; 6] = [
    "images",
    "moderation",
    "upscale",
    "email",
    "sms",
    "webhooks",
];

/// Each provider behind the shared limiter, keyed by its settings section
/// (`rate_limits.providers.images`, `.moderation`, `.upscale`, `.email`,
/// `.sms`); a key without a limit costs nothing.
pub struct BuiltProviders {
    pub generator: Arc<dyn ImageGenerator>,
    pub moderator: Arc<dyn Moderator>,
    pub upscaler: Arc<dyn Upscaler>,
    pub mailer: Arc<dyn Mailer>,
    pub sms: Arc<dyn SmsSender>,
    pub fetcher: Arc<GuardedFetcher>,
    /// Behind the same limiter, per receiving host (`webhooks/<host>`).
    pub webhooks: Arc<crate::webhook::WebhookSender>,
}

impl ProviderSettings {
    pub fn validate(&self) -> Result<(), String> {
        self.images.validate()?;
        self.moderation.validate()?;
        self.upscale.validate()?;
        self.email.validate()?;
        self.sms.validate()?;
        self.webhooks.validate()?;
        self.rate_limits.validate()
    }

    pub fn build(&self) -> Result<BuiltProviders, String> {
        let limiter = self.rate_limits.build()?;
        Ok(BuiltProviders {
            generator: Arc::new(Limited::new(
                self.images.build()?,
                limiter.clone(),
                "images",
            )),
            moderator: Arc::new(Limited::new(
                self.moderation.build()?,
                limiter.clone(),
                "moderation",
            )),
            upscaler: Arc::new(Limited::new(
                self.upscale.build()?,
                limiter.clone(),
                "upscale",
            )),
            mailer: Arc::new(Limited::new(self.email.build()?, limiter.clone(), "email")),
            sms: Arc::new(Limited::new(self.sms.build()?, limiter.clone(), "sms")),
            fetcher: Arc::new(GuardedFetcher::new(self.reference_images.clone())),
            webhooks: Arc::new(crate::webhook::WebhookSender::new(&self.webhooks, limiter)),
        })
    }
}

/// Durations in settings are whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        images::{DevGenerator, ImageGenerator},
        moderation::{DevModerator, Moderator},
        upscale::{DevUpscaler, Upscaler},
    };

    use super::*;

    #[test]
    fn providers_are_usable_as_trait_objects() {
        let generator: Arc<dyn ImageGenerator> = Arc::new(DevGenerator);
        let moderator: Arc<dyn Moderator> = Arc::new(DevModerator::default());
        let upscaler: Arc<dyn Upscaler> = Arc::new(DevUpscaler);
        assert_eq!(generator.name(), "dev");
        assert_eq!(moderator.name(), "dev");
        assert_eq!(upscaler.name(), "dev");
    }
}
