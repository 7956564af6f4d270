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
//! `Moderator`, later others) and acquires a [`Permit`] before each call.

use std::{
    any::Any,
    collections::BTreeMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::Deserialize;
use tokio::{
    sync::{OnceCell, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use super::{
    Decision, GeneratedImage, ImageGenerator, ImageRequest, Moderator, ProviderError,
    UpscaleRequest, UpscaledImage, Upscaler,
    email::{EmailMessage, Mailer},
    sms::{SentMessage, SmsSender},
};
use tokio_util::sync::CancellationToken;

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
    Redis(RedisSlot),
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

/// Records how long a limited call waited (`kiln_provider_rate_limit_wait_seconds`).
fn observe_wait(provider: &str, started: Instant) {
    kiln_store::metrics::metrics()
        .provider_rate_limit_wait_seconds
        .with_label_values(&[provider])
        .observe(started.elapsed().as_secs_f64());
}

/// A random fraction in [0, 1), to spread pollers apart (no `rand` needed:
/// every `RandomState` is freshly seeded).
fn jitter() -> f64 {
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------
// In-process

/// Limits within this process only: a semaphore per provider for the
/// concurrency and a GCRA under a mutex for the rate.
pub struct LocalLimiter {
    providers: BTreeMap<String, LocalProvider>,
}

struct LocalProvider {
    slots: Option<Arc<Semaphore>>,
    rate: Option<Mutex<Gcra>>,
}

impl LocalLimiter {
    pub fn new(limits: BTreeMap<String, Limit>) -> Self {
        let providers = limits
            .into_iter()
            .map(|(key, limit)| {
                let provider = LocalProvider {
                    slots: limit
                        .max_concurrent
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                    rate: limit
                        .rate()
                        .map(|(interval, burst)| Mutex::new(Gcra::new(interval, burst))),
                };
                (key, provider)
            })
            .collect();
        LocalLimiter { providers }
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn acquire(&self, provider: &str) -> Result<Permit, ProviderError> {
        let Some(limits) = self.providers.get(provider) else {
            return Ok(Permit::unlimited());
        };
        let started = Instant::now();
        // The slot first, the rate second: a rate token taken while still
        // waiting for a slot would let the calls out in a burst later.
        let slot = match &limits.slots {
            Some(slots) => Some(slots.clone().acquire_owned().await.map_err(|_| {
                ProviderError::transient(UNAVAILABLE, "the local limiter was closed")
            })?),
            None => None,
        };
        if let Some(rate) = &limits.rate {
            loop {
                let verdict = rate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(Instant::now());
                match verdict {
                    Ok(()) => break,
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
        observe_wait(provider, started);
        Ok(slot.map_or_else(Permit::unlimited, |s: OwnedSemaphorePermit| Permit::new(s)))
    }
}

/// GCRA state: the theoretical arrival time of the next request.
struct Gcra {
    interval: Duration,
    /// `burst * interval`: how far ahead of now the TAT may run.
    tolerance: Duration,
    tat: Option<Instant>,
}

impl Gcra {
    fn new(interval: Duration, burst: u32) -> Self {
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst),
            tat: None,
        }
    }

    /// Takes one request at `now`, or tells how long until one is allowed.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let new_tat = tat + self.interval;
        let allowed_from = new_tat.checked_sub(self.tolerance).unwrap_or(now);
        if allowed_from > now {
            return Err(allowed_from - now);
        }
        self.tat = Some(new_tat);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Redis

/// Checks the concurrency slots and the GCRA in one atomic step, on the
/// server's clock (`TIME`) so the workers' clocks do not matter.
/// KEYS: rate key (TAT in µs), holders zset (member = permit id, score =
/// lease expiry in ms). ARGV: interval µs (0: no rate), burst, max
/// concurrent (0: no cap), permit id, lease ms.
/// Returns {1, 0} when granted, {0, µs} to retry after a rate wait, {0, -1}
/// when every slot is taken.
const ACQUIRE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local max = tonumber(ARGV[3])
if max > 0 then
  -- leases that ran out belong to crashed holders
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[2]) >= max then
    return {0, -1}
  end
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allowed_from = new_tat - tonumber(ARGV[2]) * interval
  if allowed_from > now then
    return {0, math.ceil(allowed_from - now)}
  end
  -- %.0f: Lua would print a large number in exponent form
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
    'PX', math.ceil((new_tat - now) / 1000) + 1)
end
if max > 0 then
  local lease = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[2], string.format('%.0f', now_ms + lease), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
return {1, 0}
";

/// Extends a live holder's lease; 0 when it was already gone.
/// KEYS: holders zset. ARGV: permit id, lease ms.
const REFRESH_LUA: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now_ms + lease), ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
";

/// How long a waiter sleeps when every slot is taken (with jitter, so
/// waiters across processes do not poll in step).
const SLOT_POLL: Duration = Duration::from_millis(50);

/// Limits shared through Redis by every process pointing at the same server
/// and key prefix. Connects on first use and reconnects by itself; while
/// Redis cannot answer, `acquire` fails with a transient
/// [`UNAVAILABLE`] error (the job retries later) rather than skipping the
/// limit.
pub struct RedisLimiter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    lease: Duration,
    limits: BTreeMap<String, Limit>,
    acquire: Script,
    refresh: Arc<Script>,
}

impl RedisLimiter {
    /// `url`: `redis://[:password@]host:port/db`. `prefix` starts every key
    /// (`{prefix}{<provider>}:rate`, `…:holders`). `lease`: how long a
    /// concurrency slot stays taken without its holder refreshing it (a
    /// live holder refreshes every third of it; a crashed one frees within
    /// it).
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        lease: Duration,
        limits: BTreeMap<String, Limit>,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(RedisLimiter {
            client,
            conn: OnceCell::new(),
            prefix: prefix.into(),
            // Refreshed every third of it: keep that from spinning.
            lease: lease.max(Duration::from_millis(30)),
            limits,
            acquire: Script::new(ACQUIRE_LUA),
            refresh: Arc::new(Script::new(REFRESH_LUA)),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, ProviderError> {
        let conn = self
            .conn
            .get_or_try_init(|| {
                // Short timeouts and one retry: a limiter that cannot answer
                // should fail the attempt quickly, not hold the worker.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .map_err(unavailable)?;
        Ok(conn.clone())
    }

    fn keys(&self, provider: &str) -> (String, String) {
        // The braces keep both keys in one Redis Cluster slot (one script).
        let base = format!("{}{{{provider}}}", self.prefix);
        (format!("{base}:rate"), format!("{base}:holders"))
    }
}

fn unavailable(e: redis::RedisError) -> ProviderError {
    ProviderError::transient(UNAVAILABLE, format!("Redis rate limiter: {e}"))
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(&self, provider: &str) -> Result<Permit, ProviderError> {
        let Some(limit) = self.limits.get(provider) else {
            return Ok(Permit::unlimited());
        };
        let (interval_us, burst) = limit.rate().map_or((0, 0), |(interval, burst)| {
            (interval.as_micros().clamp(1, u64::MAX.into()) as u64, burst)
        });
        let max = limit.max_concurrent.unwrap_or(0);
        let lease_ms = self.lease.as_millis() as u64;
        let (rate_key, holders_key) = self.keys(provider);
        let started = Instant::now();
        let mut conn = self.connection().await?;
        loop {
            let id = uuid::Uuid::now_v7().to_string();
            // If this future is dropped while the script runs, the slot it
            // may have taken is given back instead of waiting for its lease.
            let mut pending =
                Pending((max > 0).then(|| (conn.clone(), holders_key.clone(), id.clone())));
            let answer: (i64, i64) = self
                .acquire
                .key(&rate_key)
                .key(&holders_key)
                .arg(interval_us)
                .arg(burst)
                .arg(max)
                .arg(&id)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            // Answered: nothing left to undo behind our back.
            pending.0 = None;
            match answer {
                (1, _) => {
                    observe_wait(provider, started);
                    if max == 0 {
                        return Ok(Permit::unlimited());
                    }
                    return Ok(Permit {
                        slot: Slot::Redis(RedisSlot::hold(
                            conn,
                            holders_key,
                            id,
                            self.lease,
                            self.refresh.clone(),
                        )),
                    });
                }
                (_, wait_us) if wait_us >= 0 => {
                    tokio::time::sleep(Duration::from_micros(wait_us as u64)).await;
                }
                _ => tokio::time::sleep(SLOT_POLL.mul_f64(0.5 + jitter())).await,
            }
        }
    }
}

/// A slot possibly taken by a script call in flight: given back if the
/// caller stops waiting for the answer.
struct Pending(Option<(ConnectionManager, String, String)>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((conn, key, id)) = self.0.take() {
            spawn_remove(conn, key, id);
        }
    }
}

/// Removes a holder in the background (from `Drop`, which cannot await).
/// Without a runtime (shutting down) the lease frees the slot instead.
fn spawn_remove(mut conn: ConnectionManager, key: String, id: String) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let removed: Result<i64, _> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&id)
                .query_async(&mut conn)
                .await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "freeing a rate-limit slot failed; its lease will");
            }
        });
    }
}

/// A concurrency slot held in Redis, its lease refreshed in the background
/// while the permit lives.
struct RedisSlot {
    conn: ConnectionManager,
    key: String,
    id: String,
    refresher: JoinHandle<()>,
    released: bool,
}

impl RedisSlot {
    fn hold(
        conn: ConnectionManager,
        key: String,
        id: String,
        lease: Duration,
        refresh: Arc<Script>,
    ) -> Self {
        let refresher = tokio::spawn({
            let (mut conn, key, id) = (conn.clone(), key.clone(), id.clone());
            let lease_ms = lease.as_millis() as u64;
            async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let kept: Result<i64, _> = refresh
                        .key(&key)
                        .arg(&id)
                        .arg(lease_ms)
                        .invoke_async(&mut conn)
                        .await;
                    match kept {
                        Ok(1) => {}
                        Ok(_) => {
                            // Redis could not be reached for a whole lease:
                            // the slot went to someone else meanwhile.
                            tracing::warn!(key = %key, "rate-limit slot lease expired while held");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "refreshing a rate-limit slot failed"),
                    }
                }
            }
        });
        RedisSlot {
            conn,
            key,
            id,
            refresher,
            released: false,
        }
    }

    async fn release(&mut self) {
        self.refresher.abort();
        self.released = true;
        let removed: Result<i64, _> = redis::cmd("ZREM")
            .arg(&self.key)
            .arg(&self.id)
            .query_async(&mut self.conn)
            .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "freeing a rate-limit slot failed; its lease will");
        }
    }
}

impl Drop for RedisSlot {
    fn drop(&mut self) {
        self.refresher.abort();
        if !self.released {
            spawn_remove(
                self.conn.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.id),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Settings

/// Answers whether the Redis the limits live in is reachable, for
/// readiness checks: a fresh connection and a `PING`, bounded by `timeout`.
pub async fn ping_redis(url: &str, timeout: Duration) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
    let ping = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, ping)
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))?
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
    #[serde(with = "crate::config::millis")]
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
            redis::Client::open(url.as_str()).map_err(|e| {
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
        Ok(match &self.redis_url {
            Some(url) => Arc::new(
                RedisLimiter::new(
                    url,
                    self.key_prefix.clone(),
                    self.concurrency_lease_ms,
                    self.providers.clone(),
                )
                .map_err(|e| format!("rate_limits.redis_url: {e}"))?,
            ),
            None => Arc::new(LocalLimiter::new(self.providers.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut gcra = Gcra::new(Duration::from_millis(100), 10);
        for _ in 0..10 {
            assert_eq!(gcra.take(start), Ok(()));
        }
        assert_eq!(gcra.take(start), Err(Duration::from_millis(100)));
        assert_eq!(gcra.take(start + Duration::from_millis(100)), Ok(()));
        assert_eq!(
            gcra.take(start + Duration::from_millis(150)),
            Err(Duration::from_millis(50))
        );
        // Idle for long: the burst comes back, never more.
        let later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(gcra.take(later), Ok(()));
        }
        assert!(gcra.take(later).is_err());
    }

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
