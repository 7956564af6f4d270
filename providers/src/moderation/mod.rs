//! Moderation: the [`Moderator`] trait and its [`Decision`], the
//! `[moderation]` settings section that picks one (`dev`, the offline word
//! list; or `openai`, any OpenAI-compatible `/v1/moderations`), and both
//! implementations.

pub mod dev;
pub mod openai;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use secrecy::SecretString;
use serde::Deserialize;

use crate::ProviderError;

pub use dev::{DEFAULT_BLOCKED_WORDS, DevModerator};
pub use openai::OpenAiModerator;

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

/// A moderation verdict, stored as given: `categories` are the flagged
/// ones, `scores` may cover every category the moderator knows (0.0–1.0),
/// so policy thresholds can be tuned later against what was logged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub categories: Vec<String>,
    pub scores: BTreeMap<String, f64>,
}

/// Which moderator runs (`moderation.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Offline: the word list, no network, no keys.
    #[default]
    Dev,
    /// An OpenAI-compatible HTTP API.
    OpenAi,
}

/// The `[moderation]` settings section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationSettings {
    pub provider: Provider,
    /// Words the offline `dev` moderator blocks (whole words, any case).
    pub blocked_words: Vec<String>,
    pub base_url: String,
    /// Required with `provider = "openai"`.
    pub api_key: Option<SecretString>,
    pub model: String,
    /// Category -> score (0.0–1.0) at or above which input is blocked even
    /// when the provider does not flag it, e.g. `{ violence = 0.5 }`.
    pub thresholds: BTreeMap<String, f64>,
    #[serde(with = "crate::settings::millis")]
    pub timeout_ms: Duration,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        ModerationSettings {
            provider: Provider::Dev,
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
        if self.provider == Provider::OpenAi {
            crate::openai::validate_settings("moderation", &self.base_url, &self.api_key)?;
        }
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
            Provider::Dev => Arc::new(DevModerator::new(self.blocked_words.clone())),
            Provider::OpenAi => Arc::new(OpenAiModerator::new(
                crate::openai::endpoint(&self.base_url, &self.api_key, self.timeout_ms),
                self.model.clone(),
                self.thresholds.clone(),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_offline() {
        assert_eq!(ModerationSettings::default().build().unwrap().name(), "dev");
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
