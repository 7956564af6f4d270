//! Provider rate limits: shared through the real Redis at 127.0.0.1:6379
//! by independent limiters (separate connections, as separate worker
//! processes have), and in-process. Each Redis test uses its own random key
//! prefix. Assertions are counts (acquisitions per window, peak holders),
//! never how long something took.
//!
//! The bound: with rate R (integer) the GCRA lets a burst of R through at
//! once and then one every 1/R s, so any half-open window of one second
//! holds at most `R + burst - 1 = 2R - 1` acquisitions, and a run from the
//! first to the last acquisition of `D` seconds at most `burst + R * D`.
//! The Redis tests stamp acquisitions with the client's clock, not the
//! server's, so they allow one more for the skew between the two.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use kiln_providers::{
    ProviderError,
    images::{GeneratedImage, ImageGenerator, ImageRequest},
    limits::{
        Limit, LimitedGenerator, LimitedModerator, LocalLimiter, RateLimiter, RedisLimiter,
        UNAVAILABLE,
    },
    moderation::{Decision, Moderator},
};
use tokio::time::Instant;

const REDIS: &str = "redis://127.0.0.1:6379";
const RATE: usize = 10;

fn prefix() -> String {
    format!("kiln-test:{}:", uuid::Uuid::now_v7())
}

fn limits(rps: Option<f64>, max_concurrent: Option<u32>) -> BTreeMap<String, Limit> {
    BTreeMap::from([(
        "fake".to_owned(),
        Limit {
            requests_per_second: rps,
            max_concurrent,
        },
    )])
}

fn redis_limiter(prefix: &str, lease: Duration, limits: BTreeMap<String, Limit>) -> RedisLimiter {
    RedisLimiter::new(REDIS, prefix, lease, limits).unwrap()
}

/// `tasks` tasks per limiter acquire "fake" back to back for `run`; the
/// instants each acquisition was granted.
async fn hammer(limiters: Vec<Arc<dyn RateLimiter>>, tasks: usize, run: Duration) -> Vec<Instant> {
    let deadline = Instant::now() + run;
    let mut handles = Vec::new();
    for limiter in limiters {
        for _ in 0..tasks {
            let limiter = limiter.clone();
            handles.push(tokio::spawn(async move {
                let mut granted = Vec::new();
                while Instant::now() < deadline {
                    let permit = limiter.acquire("fake").await.unwrap();
                    granted.push(Instant::now());
                    drop(permit);
                }
                granted
            }));
        }
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all.sort();
    all
}

/// The most instants in any half-open window `[t, t + window)`.
fn max_in_window(sorted: &[Instant], window: Duration) -> usize {
    let mut first = 0;
    let mut max = 0;
    for (last, t) in sorted.iter().enumerate() {
        while *t - sorted[first] >= window {
            first += 1;
        }
        max = max.max(last - first + 1);
    }
    max
}

/// Checks the GCRA's bounds (plus `slack` for clock skew) and that the
/// limiter did not starve its callers.
fn assert_rate(granted: &[Instant], run: Duration, slack: usize) {
    let burst = RATE;
    let in_window = max_in_window(granted, Duration::from_secs(1));
    assert!(
        in_window < RATE + burst + slack,
        "{in_window} acquisitions within one second (rate {RATE}, burst {burst})"
    );
    let span = *granted.last().unwrap() - granted[0];
    eprintln!(
        "{} acquisitions over {span:?}, at most {in_window} within one second",
        granted.len()
    );
    let allowed = burst + (span.as_secs_f64() * RATE as f64).floor() as usize + slack;
    assert!(
        granted.len() <= allowed,
        "{} acquisitions over {span:?}, at most {allowed} allowed",
        granted.len()
    );
    let expected = run.as_secs_f64() * RATE as f64;
    assert!(
        granted.len() as f64 >= 0.8 * expected,
        "only {} acquisitions in {run:?} at {RATE}/s",
        granted.len()
    );
}

/// Tasks acquire, hold for `hold`, then let go; returns the peak number of
/// holders at once and how many finished.
async fn peak_holders(
    limiters: Vec<Arc<dyn RateLimiter>>,
    tasks_per_limiter: usize,
    hold: Duration,
) -> (usize, usize) {
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for limiter in limiters {
        for i in 0..tasks_per_limiter {
            let (limiter, current, peak, finished) = (
                limiter.clone(),
                current.clone(),
                peak.clone(),
                finished.clone(),
            );
            handles.push(tokio::spawn(async move {
                let permit = limiter.acquire("fake").await.unwrap();
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                current.fetch_sub(1, Ordering::SeqCst);
                // Both ways of letting go: awaited release and plain drop.
                if i % 2 == 0 {
                    permit.release().await;
                } else {
                    drop(permit);
                }
                finished.fetch_add(1, Ordering::SeqCst);
            }));
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    (peak.load(Ordering::SeqCst), finished.load(Ordering::SeqCst))
}

async fn holders(prefix: &str) -> usize {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(format!("{prefix}{{fake}}:holders"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rate_holds_across_independent_limiters() {
    let prefix = prefix();
    // Three "processes", each with its own connection and two callers.
    let limiters: Vec<Arc<dyn RateLimiter>> = (0..3)
        .map(|_| {
            Arc::new(redis_limiter(
                &prefix,
                Duration::from_secs(60),
                limits(Some(RATE as f64), None),
            )) as Arc<dyn RateLimiter>
        })
        .collect();
    let run = Duration::from_millis(2500);
    let granted = hammer(limiters, 2, run).await;
    assert_rate(&granted, run, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrency_cap_holds_across_independent_limiters() {
    let prefix = prefix();
    let limiters: Vec<Arc<dyn RateLimiter>> = (0..3)
        .map(|_| {
            Arc::new(redis_limiter(
                &prefix,
                Duration::from_secs(60),
                limits(None, Some(2)),
            )) as Arc<dyn RateLimiter>
        })
        .collect();
    let (peak, finished) = peak_holders(limiters, 4, Duration::from_millis(100)).await;
    assert_eq!(finished, 12);
    assert!(peak <= 2, "{peak} holders at once, cap 2");
    assert_eq!(peak, 2, "the two slots were used together");
}

#[tokio::test]
async fn redis_released_or_dropped_permit_frees_the_slot() {
    let prefix = prefix();
    let limiter = redis_limiter(&prefix, Duration::from_secs(60), limits(None, Some(1)));

    let permit = limiter.acquire("fake").await.unwrap();
    assert_eq!(holders(&prefix).await, 1);
    // The only slot is taken: a second caller waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), limiter.acquire("fake"))
            .await
            .is_err()
    );
    permit.release().await;
    assert_eq!(holders(&prefix).await, 0);

    let permit = limiter.acquire("fake").await.unwrap();
    drop(permit);
    let again = tokio::time::timeout(Duration::from_secs(10), limiter.acquire("fake")).await;
    assert!(again.is_ok(), "the dropped permit's slot was freed");
}

#[tokio::test]
async fn redis_slot_of_a_crashed_holder_frees_after_its_lease() {
    let prefix = prefix();
    let lease = Duration::from_millis(500);
    // A "process" that takes the slot and dies without letting go: its own
    // runtime ends, and with it the lease refresher.
    std::thread::spawn({
        let prefix = prefix.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let limiter = redis_limiter(&prefix, lease, limits(None, Some(1)));
                std::mem::forget(limiter.acquire("fake").await.unwrap());
            });
        }
    })
    .join()
    .unwrap();
    assert_eq!(holders(&prefix).await, 1, "the crashed holder still counts");

    let survivor = redis_limiter(&prefix, lease, limits(None, Some(1)));
    let permit = tokio::time::timeout(Duration::from_secs(10), survivor.acquire("fake")).await;
    assert!(permit.is_ok(), "the lease ran out and freed the slot");
}

#[tokio::test]
async fn redis_slot_of_a_live_holder_outlasts_its_lease() {
    let prefix = prefix();
    let lease = Duration::from_millis(300);
    let limiter = redis_limiter(&prefix, lease, limits(None, Some(1)));
    let permit = limiter.acquire("fake").await.unwrap();
    // Several leases long: the holder keeps refreshing it.
    let other = redis_limiter(&prefix, lease, limits(None, Some(1)));
    assert!(
        tokio::time::timeout(lease * 4, other.acquire("fake"))
            .await
            .is_err()
    );
    permit.release().await;
    assert!(other.acquire("fake").await.is_ok());
}

#[tokio::test]
async fn redis_unreachable_is_a_transient_error_not_a_free_pass() {
    let limiter = RedisLimiter::new(
        "redis://127.0.0.1:1",
        prefix(),
        Duration::from_secs(60),
        limits(Some(1.0), Some(1)),
    )
    .unwrap();
    let err = limiter.acquire("fake").await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transient { code, .. } if code == UNAVAILABLE),
        "{err:?}"
    );
    // A provider without limits needs no Redis.
    assert!(limiter.acquire("other").await.is_ok());
}

// In-process: the same properties, on tokio's paused clock (exact, instant).

#[tokio::test(start_paused = true)]
async fn local_rate_is_respected() {
    let limiter: Arc<dyn RateLimiter> =
        Arc::new(LocalLimiter::new(limits(Some(RATE as f64), None)));
    let run = Duration::from_millis(2500);
    let granted = hammer(vec![limiter], 6, run).await;
    assert_rate(&granted, run, 0);
}

#[tokio::test(start_paused = true)]
async fn local_concurrency_cap_is_respected() {
    let limiter: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new(limits(None, Some(2))));
    let (peak, finished) = peak_holders(vec![limiter], 12, Duration::from_millis(100)).await;
    assert_eq!(finished, 12);
    assert_eq!(peak, 2);
}

#[tokio::test]
async fn local_unknown_provider_is_unlimited() {
    let limiter = LocalLimiter::new(limits(None, Some(1)));
    let _held = limiter.acquire("fake").await.unwrap();
    let other = tokio::time::timeout(Duration::from_secs(10), limiter.acquire("other")).await;
    assert!(other.is_ok());
}

// The wrappers.

/// Counts calls and the most calls in flight at once.
#[derive(Default)]
struct CountingFake {
    calls: AtomicUsize,
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingFake {
    async fn call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl ImageGenerator for CountingFake {
    fn name(&self) -> &'static str {
        "counting"
    }

    async fn generate(&self, req: &ImageRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
        self.call().await;
        Ok((0..req.n)
            .map(|_| GeneratedImage {
                png: bytes::Bytes::from_static(b"png"),
                width: req.width,
                height: req.height,
            })
            .collect())
    }
}

#[async_trait]
impl Moderator for CountingFake {
    fn name(&self) -> &'static str {
        "counting"
    }

    async fn check_text(&self, _text: &str) -> Result<Decision, ProviderError> {
        self.call().await;
        Ok(Decision {
            allowed: true,
            categories: Vec::new(),
            scores: BTreeMap::new(),
        })
    }

    async fn check_image(&self, _png: &[u8]) -> Result<Decision, ProviderError> {
        self.call().await;
        Err(ProviderError::permanent("content_blocked", "no"))
    }
}

#[tokio::test(start_paused = true)]
async fn wrappers_delegate_under_the_limit() {
    let fake = Arc::new(CountingFake::default());
    let limiter: Arc<dyn RateLimiter> = Arc::new(LocalLimiter::new(limits(None, Some(1))));
    let generator: Arc<dyn ImageGenerator> = Arc::new(LimitedGenerator::new(
        fake.clone() as Arc<dyn ImageGenerator>,
        limiter.clone(),
        "fake",
    ));
    let moderator: Arc<dyn Moderator> = Arc::new(LimitedModerator::new(
        fake.clone() as Arc<dyn Moderator>,
        limiter,
        "fake",
    ));
    assert_eq!(generator.name(), "counting");
    assert_eq!(moderator.name(), "counting");

    let request = ImageRequest {
        prompt: "a kiln".into(),
        model: "m".into(),
        width: 8,
        height: 8,
        n: 2,
        reference_urls: Vec::new(),
    };
    let calls = (0..4).map(|_| {
        let (generator, moderator, request) = (generator.clone(), moderator.clone(), &request);
        async move {
            assert_eq!(generator.generate(request).await.unwrap().len(), 2);
            assert!(moderator.check_text("hi").await.unwrap().allowed);
            // Errors come back as the provider gave them.
            assert_eq!(
                moderator.check_image(b"png").await.unwrap_err().code(),
                "content_blocked"
            );
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(fake.calls.load(Ordering::SeqCst), 12);
    assert_eq!(fake.peak.load(Ordering::SeqCst), 1, "one call at a time");
}
