//! Limits shared through Redis by every process pointing at the same
//! server and key prefix, and the `PING` readiness checks use.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::{sync::OnceCell, task::JoinHandle, time::Instant};

use super::{Limit, Permit, RateLimiter, Slot, UNAVAILABLE, observe_wait};
use crate::ProviderError;

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
    redis: LazyConnection,
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
        Ok(RedisLimiter {
            redis: LazyConnection::new(url)?,
            prefix: prefix.into(),
            // Refreshed every third of it: keep that from spinning.
            lease: lease.max(Duration::from_millis(30)),
            limits,
            acquire: Script::new(ACQUIRE_LUA),
            refresh: Arc::new(Script::new(REFRESH_LUA)),
        })
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

/// A Redis connection made on first use, then shared; it reconnects by
/// itself. Used by every limit kept in Redis.
pub(super) struct LazyConnection {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
}

impl LazyConnection {
    pub(super) fn new(url: &str) -> Result<LazyConnection, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(LazyConnection {
            client,
            conn: OnceCell::new(),
        })
    }

    pub(super) async fn get(&self) -> Result<ConnectionManager, redis::RedisError> {
        let conn = self
            .conn
            .get_or_try_init(|| {
                // Short timeouts and one retry: a limit that cannot answer
                // should fail its caller quickly, not hold it.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(&self, provider: &str) -> Result<Permit, ProviderError> {
        let Some(limit) =
            (self.limits.get(provider)).or_else(|| self.limits.get(super::family(provider)))
        else {
            return Ok(Permit::unlimited());
        };
        let (interval_us, burst) = limit.rate().map_or((0, 0), |(interval, burst)| {
            (interval.as_micros().clamp(1, u64::MAX.into()) as u64, burst)
        });
        let max = limit.max_concurrent.unwrap_or(0);
        let lease_ms = self.lease.as_millis() as u64;
        let (rate_key, holders_key) = self.keys(provider);
        let started = Instant::now();
        let mut conn = self.redis.get().await.map_err(unavailable)?;
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
pub(super) struct RedisSlot {
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

    pub(super) async fn release(&mut self) {
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

/// A random fraction in [0, 1), to spread pollers apart (no `rand` needed:
/// every `RandomState` is freshly seeded).
fn jitter() -> f64 {
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

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
