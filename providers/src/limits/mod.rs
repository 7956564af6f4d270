//! Provider rate limits shared by every worker process: requests per second
//! and calls in flight, per provider key (`rate_limits.providers.<key>`).
//!
//! With `rate_limits.redis_url` set, the limits live in Redis and hold for
//! all processes together (N workers never exceed the configured rate);
//! without it, each process limits itself alone ([`LocalLimiter`]), so N
//! processes may reach N times the rate.
//!
//! The rate is a GCRA (generic cell rate algorithm): one request every
//! `1/rate` seconds, with a burst of `max(1, floor(rate))` requests. In any
//! window of one second at most `rate + burst - 1` requests are let through
//! (for an integer rate R: `2R - 1`); over a longer run of `D` seconds, at
//! most `R * D + burst`.
//!
//! Handlers do not change: [`Limited`] wraps a provider (`ImageGenerator`,
//! `Moderator`, `Upscaler`, `Mailer`, `SmsSender`) and acquires a
//! [`Permit`] before each call.
//!
//! - `local`: the in-process limiter (a semaphore and a GCRA per key);
//! - `redis`: the shared limiter (one Lua script per acquisition, on the
//!   server's clock) and the readiness `PING`;
//! - `wrapper`: [`Limited`], each provider trait behind a limiter;
//! - `windows`: [`RedisWindows`], sliding-window counts that refuse
//!   rather than wait, for the API's per-address limits.

mod local;
mod redis;
mod windows;
mod wrapper;

use std::{
    any::Any,
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;

use crate::ProviderError;

pub use self::local::LocalLimiter;
pub use self::redis::{RedisLimiter, ping_redis};
pub use self::windows::{CountWindow, RedisWindows};
pub use self::wrapper::{Limited, LimitedGenerator, LimitedModerator, limited};

/// The error code of a limiter that cannot answer (Redis down): the job
/// retries later rather than calling the provider unlimited.
pub const UNAVAILABLE: &str = "rate_limiter_unavailable";

/// One provider's limits; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limit {
    /// Requests started per second, averaged; bursts up to `max(1, floor(rate))`.
    pub requests_per_second: Option<f64>,
    /// Calls in flight at once.
    pub max_concurrent: Option<u32>,
}

/// The settings name of [`Limit`] (`rate_limits.providers.<key>`).
pub type LimitSetting = Limit;

impl Limit {
    /// The GCRA's emission interval and burst, when a rate is set.
    fn rate(&self) -> Option<(Duration, u32)> {
        let rate = self.requests_per_second?;
        // Validated > 0 and finite; a rate too small for a Duration is as
        // good as "never", so it saturates.
        let interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX);
        let burst = (rate.floor() as u32).max(1);
        Some((interval, burst))
    }
}

/// The limit key a call is counted under, for keys written
/// `family/part` (`webhooks/example.com`): such a key has its family's
/// limit (`rate_limits.providers.webhooks`), counted apart for each part.
/// Metrics name the family only, so their labels stay bounded.
pub fn family(key: &str) -> &str {
    key.split_once('/').map_or(key, |(family, _)| family)
}

/// The limit of webhook deliveries to one receiving host
/// (`webhooks/<host>`), when `rate_limits.providers.webhooks` is not set.
pub const DEFAULT_WEBHOOK_LIMIT: Limit = Limit {
    requests_per_second: Some(10.0),
    max_concurrent: Some(4),
};

/// Hands out permission to call a provider. `acquire` waits (sleeping, not
/// spinning) until both the rate and the concurrency limit allow; dropping
/// its future gives up waiting without holding anything (how the runtime
/// cancels a job).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// A permit for one call to `provider` (a key of
    /// `rate_limits.providers`; an unknown key is unlimited). Hold it for
    /// the whole call: dropping it frees the concurrency slot.
    async fn acquire(&self, provider: &str) -> Result<Permit, ProviderError>;
}

/// Permission for one provider call. Dropping it frees its concurrency
/// slot; [`Permit::release`] does the same and, for Redis, waits until the
/// slot is actually free.
#[must_use = "the concurrency slot is freed when the permit is dropped"]
pub struct Permit {
    slot: Slot,
}

enum Slot {
    None,
    /// Anything whose drop frees the slot (a semaphore permit, a custom
    /// limiter's guard).
    Guard(#[allow(dead_code)] Box<dyn Any + Send + Sync>),
    Redis(self::redis::RedisSlot),
}

impl Permit {
    /// A permit that holds no slot (no concurrency limit).
    pub fn unlimited() -> Self {
        Permit { slot: Slot::None }
    }

    /// A permit whose slot is freed by dropping `guard`; for custom
    /// limiters (and tests).
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        Permit {
            slot: Slot::Guard(Box::new(guard)),
        }
    }

    /// Frees the slot now. Redis: awaits the removal, so the next waiter
    /// (in any process) can take the slot at once; on error the lease
    /// frees it later.
    pub async fn release(self) {
        if let Slot::Redis(mut slot) = self.slot {
            slot.release().await;
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.slot {
            Slot::None => "unlimited",
            Slot::Guard(_) => "local",
            Slot::Redis(_) => "redis",
        };
        f.debug_struct("Permit").field("slot", &kind).finish()
    }
}

/// Where limited calls report how long they waited for their permit: set
/// once per process by whoever owns the metrics; unset, waits go
/// unrecorded.
static WAIT_OBSERVER: OnceLock<fn(&str, Duration)> = OnceLock::new();

/// Reports how long each limited call waited for its permit, by provider
/// key, to `observe` (e.g. a histogram of seconds). The first call in a
/// process wins; later ones change nothing.
pub fn observe_waits_with(observe: fn(&str, Duration)) {
    let _ = WAIT_OBSERVER.set(observe);
}

/// Reports the wait of one acquisition that began at `started`.
fn observe_wait(provider: &str, started: Instant) {
    if let Some(observe) = WAIT_OBSERVER.get() {
        observe(family(provider), started.elapsed());
    }
}

/// Where provider calls report their outcome and duration: set once per
/// process like [`observe_waits_with`].
static CALL_OBSERVER: OnceLock<fn(&str, CallOutcome, Duration)> = OnceLock::new();

/// How a provider call ended, as metrics count it (a bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// Failed in a way a later attempt may not (timeouts, 429, 5xx).
    Retryable,
    /// Refused for good (bad input, blocked content, a 4xx).
    Refused,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Retryable => "retryable",
            CallOutcome::Refused => "refused",
        }
    }
}

/// Reports each provider call's outcome and duration (not counting the
/// wait for its permit), by provider key, to `observe`. The first call in
/// a process wins.
pub fn observe_calls_with(observe: fn(&str, CallOutcome, Duration)) {
    let _ = CALL_OBSERVER.set(observe);
}

/// The span of one provider call (in the job's trace when a job makes it),
/// named by the provider's family; its `outcome` is recorded at the end.
pub(crate) fn call_span(provider: &str) -> tracing::Span {
    tracing::info_span!(
        "provider",
        otel.name = %format!("provider {}", family(provider)),
        otel.kind = "client",
        provider = family(provider),
        outcome = tracing::field::Empty,
    )
}

pub(crate) fn record_outcome<T>(span: &tracing::Span, result: &Result<T, ProviderError>) {
    let outcome = match result {
        Ok(_) => CallOutcome::Ok,
        Err(ProviderError::Transient { .. }) => CallOutcome::Retryable,
        Err(ProviderError::Permanent { .. }) => CallOutcome::Refused,
    };
    span.record("outcome", outcome.as_str());
}

pub(crate) fn observe_call<T>(provider: &str, result: &Result<T, ProviderError>, took: Duration) {
    if let Some(observe) = CALL_OBSERVER.get() {
        let outcome = match result {
            Ok(_) => CallOutcome::Ok,
            Err(ProviderError::Transient { .. }) => CallOutcome::Retryable,
            Err(ProviderError::Permanent { .. }) => CallOutcome::Refused,
        };
        observe(family(provider), outcome, took);
    }
}

/// The `rate_limits` settings section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Shared limits across processes through this Redis; unset: each
    /// process limits itself alone.
    pub redis_url: Option<String>,
    /// Starts every Redis key; processes sharing limits use the same one.
    pub key_prefix: String,
    /// How long a crashed worker's concurrency slot stays taken.
    #[serde(with = "crate::settings::millis")]
    pub concurrency_lease_ms: Duration,
    /// Limits by provider key (e.g. `openai_images`); keys not listed are
    /// unlimited.
    pub providers: BTreeMap<String, LimitSetting>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            redis_url: None,
            key_prefix: "kiln:ratelimit:".to_owned(),
            // Live holders refresh every 20 s, so a slot is lost only when
            // its worker is: freed within a minute.
            concurrency_lease_ms: Duration::from_secs(60),
            providers: BTreeMap::new(),
        }
    }
}

/// The URL may carry a password: printed without it.
impl std::fmt::Debug for RateLimitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.redis_url.as_deref().map(redact_url);
        f.debug_struct("RateLimitSettings")
            .field("redis_url", &url)
            .field("key_prefix", &self.key_prefix)
            .field("concurrency_lease_ms", &self.concurrency_lease_ms)
            .field("providers", &self.providers)
            .finish()
    }
}

fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot have a password at all.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable>".to_owned(),
    }
}

impl RateLimitSettings {
    /// Checks the settings; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.redis_url {
            ::redis::Client::open(url.as_str()).map_err(|e| {
                format!(
                    "rate_limits.redis_url: {} is not a Redis URL ({e})",
                    redact_url(url)
                )
            })?;
        }
        if self.key_prefix.is_empty() {
            return Err("rate_limits.key_prefix: must not be empty".into());
        }
        if self.concurrency_lease_ms < Duration::from_secs(1) {
            return Err("rate_limits.concurrency_lease_ms: must be at least 1000".into());
        }
        for (key, limit) in &self.providers {
            let name = format!("rate_limits.providers.{key}");
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(format!(
                    "{name}: provider keys are letters, digits, '_', '-' or '.'"
                ));
            }
            if let Some(rate) = limit.requests_per_second
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(format!("{name}.requests_per_second: must be > 0"));
            }
            if limit.max_concurrent == Some(0) {
                return Err(format!("{name}.max_concurrent: must be >= 1"));
            }
        }
        Ok(())
    }

    /// The limiter these settings describe: Redis-backed when `redis_url`
    /// is set, in-process otherwise.
    pub fn build(&self) -> Result<Arc<dyn RateLimiter>, String> {
        self.validate()?;
        let mut providers = self.providers.clone();
        providers
            .entry("webhooks".to_owned())
            .or_insert(DEFAULT_WEBHOOK_LIMIT);
        Ok(match &self.redis_url {
            Some(url) => Arc::new(
                RedisLimiter::new(
                    url,
                    self.key_prefix.clone(),
                    self.concurrency_lease_ms,
                    providers,
                )
                .map_err(|e| format!("rate_limits.redis_url: {e}"))?,
            ),
            None => Arc::new(LocalLimiter::new(providers)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_the_whole_rate_at_least_one() {
        let limit = |rps| Limit {
            requests_per_second: Some(rps),
            max_concurrent: None,
        };
        assert_eq!(limit(10.0).rate(), Some((Duration::from_millis(100), 10)));
        assert_eq!(limit(0.5).rate(), Some((Duration::from_secs(2), 1)));
        assert_eq!(limit(2.7).rate().map(|(_, b)| b), Some(2));
        assert_eq!(Limit::default().rate(), None);
    }

    #[test]
    fn settings_parse_and_default_to_in_process() {
        let settings: RateLimitSettings = serde_json::from_str(
            r#"{"providers": {"openai_images": {"requests_per_second": 5, "max_concurrent": 2}}}"#,
        )
        .unwrap();
        assert_eq!(settings.key_prefix, "kiln:ratelimit:");
        assert_eq!(settings.concurrency_lease_ms, Duration::from_secs(60));
        assert_eq!(
            settings.providers["openai_images"],
            Limit {
                requests_per_second: Some(5.0),
                max_concurrent: Some(2)
            }
        );
        assert!(settings.build().is_ok());
        assert!(
            serde_json::from_str::<RateLimitSettings>(r#"{"providers": {"x": {"rps": 1}}}"#)
                .is_err()
        );
    }

    #[test]
    fn validation_names_the_setting() {
        let with = |limit: Limit| RateLimitSettings {
            providers: BTreeMap::from([("openai".to_owned(), limit)]),
            ..Default::default()
        };
        let err = |s: RateLimitSettings| s.validate().unwrap_err();
        assert_eq!(
            err(with(Limit {
                requests_per_second: Some(0.0),
                max_concurrent: None
            })),
            "rate_limits.providers.openai.requests_per_second: must be > 0"
        );
        assert_eq!(
            err(with(Limit {
                requests_per_second: Some(f64::NAN),
                max_concurrent: None
            })),
            "rate_limits.providers.openai.requests_per_second: must be > 0"
        );
        assert_eq!(
            err(with(Limit {
                requests_per_second: None,
                max_concurrent: Some(0)
            })),
            "rate_limits.providers.openai.max_concurrent: must be >= 1"
        );
        let bad_url = RateLimitSettings {
            redis_url: Some("http://localhost".into()),
            ..Default::default()
        };
        assert!(err(bad_url).starts_with("rate_limits.redis_url: "));
        let short_lease = RateLimitSettings {
            concurrency_lease_ms: Duration::from_millis(10),
            ..Default::default()
        };
        assert!(err(short_lease).starts_with("rate_limits.concurrency_lease_ms"));
    }

    #[test]
    fn the_redis_password_never_prints() {
        let settings = RateLimitSettings {
            redis_url: Some("redis://:hunter2@cache:6379/0".into()),
            ..Default::default()
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("cache:6379"));
    }

    #[tokio::test]
    async fn redis_settings_build_without_connecting() {
        let settings = RateLimitSettings {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..Default::default()
        };
        let limiter = settings.build().unwrap();
        // No limit for this key: no Redis call, so no error.
        assert!(limiter.acquire("anything").await.is_ok());
    }
}
