//! Counting windows in Redis, for limits that refuse instead of waiting
//! (the API's "one code a minute, five an hour" per address): every
//! process pointing at the same server and key prefix shares the counts.
//! Exact sliding windows, one sorted set per key and window, checked and
//! recorded by one Lua script on the server's clock.

use std::time::Duration;

use redis::Script;

use super::{UNAVAILABLE, redis::LazyConnection};
use crate::ProviderError;

/// KEYS: one sorted set per window (member = event id, score = ms).
/// ARGV: event id (empty: only look), then per window its max and its
/// length in ms. Returns 0 when every window has room (and, with an id,
/// the event was recorded in each), otherwise the ms until each window
/// would have room (the longest), recording nothing.
const HIT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[2 * i])
  local per = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per)
  local count = redis.call('ZCARD', key)
  if count >= max then
    local leaving = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
    local w = tonumber(leaving[2]) + per - now
    if w > wait then wait = w end
  end
end
if wait > 0 or ARGV[1] == '' then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return 0
";

/// At most `max` events in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountWindow {
    pub max: u32,
    pub per: Duration,
}

/// Sliding-window counts shared through Redis. Connects on first use and
/// reconnects by itself; while Redis cannot answer, `hit` fails with a
/// transient [`UNAVAILABLE`] error (callers refuse rather than skip the
/// limit).
pub struct RedisWindows {
    redis: LazyConnection,
    prefix: String,
    script: Script,
}

impl RedisWindows {
    /// `url`: `redis://[:password@]host:port/db`; `prefix` starts every key
    /// (`{prefix}window:{<key>}:<ms>`).
    pub fn new(url: &str, prefix: impl Into<String>) -> Result<Self, String> {
        Ok(RedisWindows {
            redis: LazyConnection::new(url)?,
            prefix: prefix.into(),
            script: Script::new(HIT_LUA),
        })
    }

    /// Records an event for `key` when every window has room and answers
    /// `None`; otherwise records nothing and answers how long until there
    /// would be room. Windows with `max` or `per` 0 are no limit. `key`
    /// goes into Redis key names as it is: pass a pseudonym, not an address.
    pub async fn hit(
        &self,
        key: &str,
        windows: &[CountWindow],
    ) -> Result<Option<Duration>, ProviderError> {
        self.run(key, windows, true).await
    }

    /// [`RedisWindows::hit`] without recording: how long until every
    /// window would have room (`None`: now).
    pub async fn peek(
        &self,
        key: &str,
        windows: &[CountWindow],
    ) -> Result<Option<Duration>, ProviderError> {
        self.run(key, windows, false).await
    }

    async fn run(
        &self,
        key: &str,
        windows: &[CountWindow],
        record: bool,
    ) -> Result<Option<Duration>, ProviderError> {
        let windows: Vec<CountWindow> = windows
            .iter()
            .copied()
            .filter(|w| w.max > 0 && !w.per.is_zero())
            .collect();
        if windows.is_empty() {
            return Ok(None);
        }
        let mut invocation = self.script.prepare_invoke();
        for w in &windows {
            // The braces keep a key's windows in one Redis Cluster slot.
            invocation.key(format!(
                "{}window:{{{key}}}:{}",
                self.prefix,
                w.per.as_millis()
            ));
        }
        invocation.arg(if record {
            uuid::Uuid::now_v7().to_string()
        } else {
            String::new()
        });
        for w in &windows {
            invocation
                .arg(w.max)
                .arg(w.per.as_millis().clamp(1, u64::MAX.into()) as u64);
        }
        let mut conn = self.redis.get().await.map_err(unavailable)?;
        let wait_ms: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }
}

fn unavailable(e: redis::RedisError) -> ProviderError {
    ProviderError::transient(UNAVAILABLE, format!("Redis windows: {e}"))
}
