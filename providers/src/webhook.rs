//! Delivers clients' webhooks: a POST under the same guard as reference
//! image downloads (https, public addresses only, no redirects, a capped
//! read of the answer), limited per receiving host so one slow or flooded
//! receiver cannot take every worker slot (`rate_limits.providers.webhooks`
//! applies to each host apart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::Instrument;

use crate::ProviderError;
use crate::fetch::{FetchPolicy, GuardedFetcher, PostFailure};
use crate::limits::RateLimiter;

/// The `[webhooks]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// TEST ONLY: also accept `http://` URLs. Never in production.
    pub allow_http: bool,
    /// TEST ONLY: skip the public-address check (receivers on 127.0.0.1).
    /// Never in production: it lets clients make kiln call its own network.
    pub allow_private_addresses: bool,
    /// Connecting, sending and reading the answer, together.
    #[serde(with = "crate::settings::millis")]
    pub timeout_ms: Duration,
    /// How much of a receiver's answer is read (then dropped).
    pub max_response_bytes: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_http: false,
            allow_private_addresses: false,
            timeout_ms: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

impl WebhookSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms < Duration::from_millis(100) {
            return Err("webhooks.timeout_ms: must be at least 100".into());
        }
        Ok(())
    }

    /// The guard client's policy.
    pub fn policy(&self) -> FetchPolicy {
        FetchPolicy {
            allow_http: self.allow_http,
            allow_private_addresses: self.allow_private_addresses,
            max_bytes: self.max_response_bytes,
            timeout: self.timeout_ms,
        }
    }

    /// The guard alone, for checking addresses when a client gives them.
    pub fn guard(&self) -> GuardedFetcher {
        GuardedFetcher::new(self.policy()).for_subject("webhook")
    }
}

/// Sends webhook deliveries. Build one per process and share it.
pub struct WebhookSender {
    fetcher: GuardedFetcher,
    limiter: Arc<dyn RateLimiter>,
}

impl WebhookSender {
    pub fn new(settings: &WebhookSettings, limiter: Arc<dyn RateLimiter>) -> WebhookSender {
        WebhookSender {
            fetcher: settings.guard(),
            limiter,
        }
    }

    /// POSTs `body` to `url` with `headers` once a permit for the URL's
    /// host is free (see [`GuardedFetcher::post_json`] for what counts as
    /// delivered, transient or permanent).
    pub async fn send(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, PostFailure> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        let key = format!("webhooks/{host}");
        let span = crate::limits::call_span(&key);
        let permit = self
            .limiter
            .acquire(&key)
            .instrument(span.clone())
            .await
            .map_err(|error| PostFailure {
                status: None,
                error,
            })?;
        let started = Instant::now();
        let result = self
            .fetcher
            .post_json(url, headers, body)
            .instrument(span.clone())
            .await;
        let outcome: Result<(), ProviderError> = match &result {
            Ok(_) => Ok(()),
            Err(failure) => Err(failure.error.clone()),
        };
        crate::limits::observe_call(&key, &outcome, started.elapsed());
        crate::limits::record_outcome(&span, &outcome);
        permit.release().await;
        result
    }
}
