use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter, capped: attempt `n` waits about
/// `base * 2^(n-1)`, never more than `max`. Half of the delay is random so a
/// burst of failures does not retry in lock-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(600),
    };

    /// The delay before the next attempt, after `attempt` attempts have run.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max)
            .as_millis() as u64;
        let half = full / 2;
        let jitter = if half == 0 {
            0
        } else {
            rand::rng().random_range(0..=half)
        };
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        for _ in 0..100 {
            let first = b.delay(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = b.delay(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = b.delay(40);
            assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::DEFAULT;
        let delays: std::collections::HashSet<_> = (0..50).map(|_| b.delay(5)).collect();
        assert!(delays.len() > 1, "every delay was the same: {delays:?}");
    }
}
