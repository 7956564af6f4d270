//! Limits on how often something may happen for one key (a pseudonym of an
//! address, never the address): at most `max` events in any `per`, for each
//! of several windows at once ("1 a minute and 5 an hour"). The API refuses
//! beyond them with 429 `rate_limited` and `Retry-After`.
//!
//! [`LocalThrottle`] keeps the events in this process (the embedded
//! default, one process); with `rate_limits.redis_url` set, the binary
//! hands the API a Redis-backed [`Throttle`] that every `serve` process
//! shares (`kiln_providers::limits::RedisWindows`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;

use crate::DependencyError;

/// At most `max` events in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max: u32,
    pub per: Duration,
}

/// Counts events per key against windows.
#[async_trait]
pub trait Throttle: Send + Sync {
    /// Records an event for `key` when every window has room for it and
    /// answers `None`; otherwise records nothing and answers how long until
    /// there would be room. A window with `max` 0 or `per` 0 is no limit.
    async fn hit(&self, key: &str, windows: &[Window])
    -> Result<Option<Duration>, DependencyError>;

    /// [`Throttle::hit`] without recording: how long until every window
    /// would have room for one more event (`None`: now).
    async fn peek(
        &self,
        key: &str,
        windows: &[Window],
    ) -> Result<Option<Duration>, DependencyError>;
}

/// Above this many keys, a hit first forgets the keys with no event in
/// the longest window.
const SWEEP_AT: usize = 10_000;

/// Events kept in this process's memory (exact sliding windows).
#[derive(Default)]
pub struct LocalThrottle {
    events: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LocalThrottle {
    pub fn new() -> LocalThrottle {
        LocalThrottle::default()
    }

    /// [`Throttle::hit`] at the instant `now`.
    pub fn hit_at(&self, key: &str, windows: &[Window], now: Instant) -> Option<Duration> {
        self.count_at(key, windows, now, true)
    }

    /// [`Throttle::peek`] at the instant `now`.
    pub fn peek_at(&self, key: &str, windows: &[Window], now: Instant) -> Option<Duration> {
        self.count_at(key, windows, now, false)
    }

    fn count_at(
        &self,
        key: &str,
        windows: &[Window],
        now: Instant,
        record: bool,
    ) -> Option<Duration> {
        let windows: Vec<Window> = windows
            .iter()
            .copied()
            .filter(|w| w.max > 0 && !w.per.is_zero())
            .collect();
        let longest = windows.iter().map(|w| w.per).max()?;
        // A poisoned lock only means another hit panicked mid-way; the
        // counts are still counts.
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() >= SWEEP_AT {
            events.retain(|_, hits| {
                hits.back()
                    .is_some_and(|last| now.saturating_duration_since(*last) < longest)
            });
        }
        let hits = events.entry(key.to_owned()).or_default();
        while hits
            .front()
            .is_some_and(|first| now.saturating_duration_since(*first) >= longest)
        {
            hits.pop_front();
        }
        let mut wait = Duration::ZERO;
        for w in &windows {
            let recent: Vec<&Instant> = hits
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < w.per)
                .collect();
            if recent.len() >= w.max as usize {
                // Room comes when the event `max` places from the end leaves
                // the window.
                let leaving = recent[recent.len() - w.max as usize];
                wait = wait.max((*leaving + w.per).saturating_duration_since(now));
            }
        }
        if !wait.is_zero() {
            return Some(wait);
        }
        if record {
            hits.push_back(now);
        }
        None
    }
}

#[async_trait]
impl Throttle for LocalThrottle {
    async fn hit(
        &self,
        key: &str,
        windows: &[Window],
    ) -> Result<Option<Duration>, DependencyError> {
        Ok(self.hit_at(key, windows, Instant::now()))
    }

    async fn peek(
        &self,
        key: &str,
        windows: &[Window],
    ) -> Result<Option<Duration>, DependencyError> {
        Ok(self.peek_at(key, windows, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn windows() -> [Window; 2] {
        [
            Window {
                max: 1,
                per: MINUTE,
            },
            Window { max: 5, per: HOUR },
        ]
    }

    #[test]
    fn one_a_minute_and_five_an_hour() {
        let t = LocalThrottle::new();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(t.hit_at("ada", &windows(), at(0)), None);
        assert_eq!(
            t.hit_at("ada", &windows(), at(10)),
            Some(Duration::from_secs(50)),
            "the minute window"
        );
        assert_eq!(t.hit_at("bob", &windows(), at(10)), None, "keys are apart");
        for minute in 1..5 {
            assert_eq!(t.hit_at("ada", &windows(), at(minute * 61)), None);
        }
        // Five in the hour: the sixth waits for the first to leave it.
        assert_eq!(
            t.hit_at("ada", &windows(), at(5 * 61)),
            Some(HOUR - Duration::from_secs(5 * 61))
        );
        assert_eq!(t.hit_at("ada", &windows(), at(3600)), None);
        // Refused hits were not counted: the one at 3600 holds the
        // minute, and the hour holds 61, 122, 183, 244 and 3600 until the
        // one at 61 leaves it.
        assert_eq!(
            t.hit_at("ada", &windows(), at(3601)),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_peek_counts_nothing() {
        let t = LocalThrottle::new();
        let now = Instant::now();
        let three = [Window { max: 3, per: HOUR }];
        for _ in 0..10 {
            assert_eq!(t.peek_at("ada", &three, now), None);
        }
        for _ in 0..3 {
            assert_eq!(t.hit_at("ada", &three, now), None);
        }
        assert_eq!(t.peek_at("ada", &three, now), Some(HOUR));
        assert_eq!(t.peek_at("bob", &three, now), None);
    }

    #[test]
    fn zero_windows_are_no_limit() {
        let t = LocalThrottle::new();
        let now = Instant::now();
        let none = [
            Window {
                max: 0,
                per: MINUTE,
            },
            Window {
                max: 3,
                per: Duration::ZERO,
            },
        ];
        for _ in 0..10 {
            assert_eq!(t.hit_at("ada", &none, now), None);
        }
        assert_eq!(t.hit_at("ada", &[], now), None);
    }

    #[test]
    fn old_keys_are_swept() {
        let t = LocalThrottle::new();
        let start = Instant::now();
        for i in 0..SWEEP_AT {
            t.hit_at(&i.to_string(), &windows(), start);
        }
        t.hit_at("late", &windows(), start + HOUR + MINUTE);
        let events = t.events.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(events.len(), 1);
    }
}
