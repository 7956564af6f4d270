//! Which providers run, and how to reach them: the `images` and
//! `moderation` settings sections (`dev`, offline, the embedded default;
//! or `openai`, any OpenAI-compatible server), and [`ProviderSettings`],
//! every provider section together with the shared rate limits.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use secrecy::SecretString;
use serde::Deserialize;

use super::{
    DEFAULT_BLOCKED_WORDS, DevGenerator, DevModerator, ImageGenerator, Moderator, Upscaler,
    email::{EmailSettings, Mailer},
    fal::UpscaleSettings,
    fetch::{FetchPolicy, GuardedFetcher},
    limits::{Limited, RateLimitSettings},
    openai::{OpenAiEndpoint, OpenAiImages, OpenAiModerator},
    sms::{SmsSender, SmsSettings},
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
}

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
}

impl ProviderSettings {
    pub fn validate(&self) -> Result<(), String> {
        self.images.validate()?;
        self.moderation.validate()?;
        self.upscale.validate()?;
        self.email.validate()?;
        self.sms.validate()?;
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
            sms: Arc::new(Limited::new(self.sms.build()?, limiter, "sms")),
            fetcher: Arc::new(GuardedFetcher::new(self.reference_images.clone())),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Offline: no network, no keys.
    #[default]
    Dev,
    /// An OpenAI-compatible HTTP API.
    OpenAi,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesSettings {
    pub provider: ProviderKind,
    /// Base URL of the OpenAI-compatible server (paths start with `/v1/`).
    pub base_url: String,
    /// Required with `provider = "openai"`.
    pub api_key: Option<SecretString>,
    /// `quality` sent with each request (`low`, `medium`, `high`, `auto`);
    /// unset: the server's default.
    pub quality: Option<String>,
    /// Whole request, including the image bytes.
    #[serde(with = "crate::config::millis")]
    pub timeout_ms: Duration,
}

impl Default for ImagesSettings {
    fn default() -> Self {
        ImagesSettings {
            provider: ProviderKind::Dev,
            base_url: "https://api.openai.com".to_owned(),
            api_key: None,
            quality: None,
            timeout_ms: Duration::from_secs(120),
        }
    }
}

impl ImagesSettings {
    pub fn validate(&self) -> Result<(), String> {
        validate_remote("images", self.provider, &self.base_url, &self.api_key)
    }

    pub fn build(&self) -> Result<Arc<dyn ImageGenerator>, String> {
        self.validate()?;
        Ok(match self.provider {
            ProviderKind::Dev => Arc::new(DevGenerator),
            ProviderKind::OpenAi => Arc::new(OpenAiImages::new(
                endpoint(&self.base_url, &self.api_key, self.timeout_ms),
                self.quality.clone(),
            )),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationSettings {
    pub provider: ProviderKind,
    /// Words the offline `dev` moderator blocks (whole words, any case).
    pub blocked_words: Vec<String>,
    pub base_url: String,
    /// Required with `provider = "openai"`.
    pub api_key: Option<SecretString>,
    pub model: String,
    /// Category -> score (0.0–1.0) at or above which input is blocked even
    /// when the provider does not flag it, e.g. `{ violence = 0.5 }`.
    pub thresholds: BTreeMap<String, f64>,
    #[serde(with = "crate::config::millis")]
    pub timeout_ms: Duration,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        ModerationSettings {
            provider: ProviderKind::Dev,
            blocked_words: DEFAULT_BLOCKED_WORDS
                .iter()
                .map(|w| w.to_string())
                .collect(),
            base_url: "https://api.openai.com".to_owned(),
            api_key: None,
            model: "omni-moderation-latest".to_owned(),
            thresholds: BTreeMap::new(),
            timeout_ms: Duration::from_secs(30),
        }
    }
}

impl ModerationSettings {
    pub fn validate(&self) -> Result<(), String> {
        validate_remote("moderation", self.provider, &self.base_url, &self.api_key)?;
        if let Some((category, score)) = self
            .thresholds
            .iter()
            .find(|(_, s)| !(0.0..=1.0).contains(*s))
        {
            return Err(format!(
                "moderation.thresholds.{category}: {score} is not a score between 0.0 and 1.0"
            ));
        }
        Ok(())
    }

    pub fn build(&self) -> Result<Arc<dyn Moderator>, String> {
        self.validate()?;
        Ok(match self.provider {
            ProviderKind::Dev => Arc::new(DevModerator::new(self.blocked_words.clone())),
            ProviderKind::OpenAi => Arc::new(OpenAiModerator::new(
                endpoint(&self.base_url, &self.api_key, self.timeout_ms),
                self.model.clone(),
                self.thresholds.clone(),
            )),
        })
    }
}

fn validate_remote(
    section: &str,
    provider: ProviderKind,
    base_url: &str,
    api_key: &Option<SecretString>,
) -> Result<(), String> {
    if provider == ProviderKind::Dev {
        return Ok(());
    }
    if api_key.is_none() {
        return Err(format!(
            "{section}.api_key: required when {section}.provider = \"openai\""
        ));
    }
    match reqwest::Url::parse(base_url) {
        Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(()),
        _ => Err(format!(
            "{section}.base_url: {base_url:?} is not an http(s) URL"
        )),
    }
}

fn endpoint(base_url: &str, api_key: &Option<SecretString>, timeout: Duration) -> OpenAiEndpoint {
    OpenAiEndpoint {
        base_url: base_url.to_owned(),
        // Checked by validate() before any build.
        api_key: api_key.clone().unwrap_or_else(|| SecretString::from("")),
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_offline() {
        assert_eq!(ImagesSettings::default().build().unwrap().name(), "dev");
        assert_eq!(ModerationSettings::default().build().unwrap().name(), "dev");
    }

    #[test]
    fn openai_needs_a_key_and_a_url() {
        let mut images = ImagesSettings {
            provider: ProviderKind::OpenAi,
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
    fn thresholds_must_be_scores() {
        let moderation = ModerationSettings {
            thresholds: BTreeMap::from([("violence".to_owned(), 1.5)]),
            ..Default::default()
        };
        assert_eq!(
            moderation.validate().unwrap_err(),
            "moderation.thresholds.violence: 1.5 is not a score between 0.0 and 1.0"
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
}
