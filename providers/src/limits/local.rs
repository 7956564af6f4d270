//! Limits within this process only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{Limit, Permit, RateLimiter, UNAVAILABLE, observe_wait};
use crate::ProviderError;

/// Limits within this process only: a semaphore per provider for the
/// concurrency and a GCRA under a mutex for the rate.
pub struct LocalLimiter {
    providers: BTreeMap<String, Arc<LocalProvider>>,
    /// Limits of `family/part` keys (see [`super::family`]), and the state
    /// of each part met so far.
    families: BTreeMap<String, Limit>,
    parts: Mutex<HashMap<String, Arc<LocalProvider>>>,
}

/// Parts kept before idle ones are forgotten (a forgotten part starts
/// afresh: a full burst, no one in flight).
const MAX_PARTS: usize = 4096;

struct LocalProvider {
    max: Option<usize>,
    slots: Option<Arc<Semaphore>>,
    rate: Option<Mutex<Gcra>>,
}

impl LocalLimiter {
    pub fn new(limits: BTreeMap<String, Limit>) -> Self {
        let providers = limits
            .iter()
            .map(|(key, limit)| (key.clone(), Arc::new(LocalProvider::new(limit))))
            .collect();
        LocalLimiter {
            providers,
            families: limits,
            parts: Mutex::new(HashMap::new()),
        }
    }

    /// The state `key` is counted in: its own, or its part's of a family.
    fn state(&self, key: &str) -> Option<Arc<LocalProvider>> {
        if let Some(own) = self.providers.get(key) {
            return Some(Arc::clone(own));
        }
        let limit = self.families.get(super::family(key))?;
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        if parts.len() >= MAX_PARTS && !parts.contains_key(key) {
            // Forget the parts nobody holds a slot of right now.
            parts.retain(|_, state| Arc::strong_count(state) > 1 || state.busy());
        }
        Some(Arc::clone(
            parts
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(LocalProvider::new(limit))),
        ))
    }
}

impl LocalProvider {
    fn new(limit: &Limit) -> LocalProvider {
        LocalProvider {
            max: limit.max_concurrent.map(|n| n as usize),
            slots: limit
                .max_concurrent
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            rate: limit
                .rate()
                .map(|(interval, burst)| Mutex::new(Gcra::new(interval, burst))),
        }
    }

    /// Whether a call holds one of its slots.
    fn busy(&self) -> bool {
        match (&self.slots, self.max) {
            (Some(slots), Some(max)) => slots.available_permits() < max,
            _ => false,
        }
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn acquire(&self, provider: &str) -> Result<Permit, ProviderError> {
        let Some(limits) = self.state(provider) else {
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

    /// `webhooks/<host>` keys share the `webhooks` limit, counted apart
    /// per host: a host at its limit does not hold back another.
    #[tokio::test]
    async fn family_keys_are_limited_per_part() {
        let limiter = LocalLimiter::new(
            [(
                "webhooks".to_owned(),
                Limit {
                    requests_per_second: None,
                    max_concurrent: Some(1),
                },
            )]
            .into(),
        );
        let held = limiter.acquire("webhooks/a.example").await.unwrap();
        let same_host = tokio::time::timeout(
            Duration::from_millis(100),
            limiter.acquire("webhooks/a.example"),
        )
        .await;
        assert!(same_host.is_err(), "a second call to a full host waits");
        let other_host = tokio::time::timeout(
            Duration::from_millis(1000),
            limiter.acquire("webhooks/b.example"),
        )
        .await;
        assert!(other_host.is_ok(), "another host has its own slot");
        drop(held);
        let again = tokio::time::timeout(
            Duration::from_millis(1000),
            limiter.acquire("webhooks/a.example"),
        )
        .await;
        assert!(again.is_ok(), "the freed slot is taken");
        // Keys of no family and no limit of their own stay unlimited.
        assert!(limiter.acquire("images/x").await.is_ok());
    }
}
