//! Every metric kiln exports, defined once. Dashboards and alert rules in
//! `dashboards/` use exactly these names (table in README.md).

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub jobs_enqueued: IntCounterVec,
    pub jobs_started: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    pub job_retries: IntCounterVec,
    pub leases_rescued: IntCounterVec,
    pub run_seconds: HistogramVec,
    pub queue_wait_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub oldest_due_seconds: GaugeVec,
    pub workers_busy: prometheus::IntGauge,
    /// No labels; a vector so that only processes that read the registry
    /// (workers) export it, never a constant 0 from an API process.
    pub workers_alive: IntGaugeVec,
    pub workers_stalled: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub provider_rate_limit_wait_seconds: HistogramVec,
    pub enqueue_group_size: prometheus::Histogram,
    pub payment_notifications: IntCounterVec,
    pub cron_fires: IntCounterVec,
    pub cron_skips: IntCounterVec,
    pub retention_purged: IntCounterVec,
    pub subject_requests_overdue: prometheus::IntGauge,
    pub http_requests: IntCounterVec,
    pub provider_requests: IntCounterVec,
    pub provider_request_seconds: HistogramVec,
    pub http_request_seconds: HistogramVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let counter =
        |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
    let histogram =
        |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
    let gauge = |opts: Opts| -> Result<prometheus::IntGauge, prometheus::Error> {
        let g = prometheus::IntGauge::with_opts(opts)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let unlabelled = |opts: Opts| -> Result<IntGaugeVec, prometheus::Error> {
        let g = IntGaugeVec::new(opts, &[])?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let metrics = Metrics {
        jobs_enqueued: counter("kiln_jobs_enqueued_total", "Jobs inserted", &["kind"])?,
        provider_requests: counter(
            "kiln_provider_requests_total",
            "Calls to external providers, by provider key and outcome: ok, retryable (timeouts, 429, 5xx) or refused (a 4xx, blocked content)",
            &["provider", "outcome"],
        )?,
        provider_request_seconds: histogram(
            "kiln_provider_request_duration_seconds",
            "Time a provider call took, after its rate-limit permit, by provider key",
            &["provider"],
        )?,
        http_requests: counter(
            "kiln_http_requests_total",
            "Requests the public API answered, by route template (never an id), method and status",
            &["route", "method", "status"],
        )?,
        http_request_seconds: histogram(
            "kiln_http_request_duration_seconds",
            "Time to answer a request of the public API (to its headers, for a stream), by route template and method",
            &["route", "method"],
        )?,
        jobs_started: counter("kiln_jobs_started_total", "Attempts started", &["kind"])?,
        jobs_finished: counter(
            "kiln_jobs_finished_total",
            "Attempts ended, by outcome: succeeded, retried, failed, cancelled, released, snoozed, lost",
            &["kind", "outcome"],
        )?,
        job_retries: counter(
            "kiln_job_retries_total",
            "Failed attempts that will be retried",
            &["kind"],
        )?,
        payment_notifications: counter(
            "kiln_payment_notifications_total",
            "Notifications from the merchant of record, by outcome: granted, duplicate, already_paid, ignored, unknown_order, or refused (invalid_signature, stale_signature, invalid_notification)",
            &["provider", "outcome"],
        )?,
        cron_fires: counter(
            "kiln_cron_fires_total",
            "Cron slots this process enqueued a job for (summed over replicas: one per slot)",
            &["plan"],
        )?,
        cron_skips: counter(
            "kiln_cron_skips_total",
            "Cron slots this process skipped because the plan's previous job had not finished",
            &["plan"],
        )?,
        retention_purged: counter(
            "kiln_retention_purged_total",
            "Rows (and objects) the retention purge removed, by data class",
            &["class"],
        )?,
        subject_requests_overdue: {
            let g = prometheus::IntGauge::with_opts(Opts::new(
                "kiln_subject_requests_overdue",
                "Data-subject requests not answered by their due date (30 days after they were made)",
            ))?;
            registry.register(Box::new(g.clone()))?;
            g
        },
        leases_rescued: counter(
            "kiln_leases_rescued_total",
            "Running jobs taken back after their worker's lease expired",
            &["kind"],
        )?,
        run_seconds: histogram(
            "kiln_job_run_seconds",
            "Handler run time of one attempt",
            &["kind"],
        )?,
        queue_wait_seconds: histogram(
            "kiln_job_queue_wait_seconds",
            "Time from a job being due to a worker starting it",
            &["kind"],
        )?,
        queue_depth: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "kiln_queue_depth",
                    "Jobs by queue and state: the waiting and running ones (scheduled, available, retryable, running) and the dead ones kept for operators (failed); succeeded and cancelled history is not counted",
                ),
                &["queue", "state"],
            )?;
            registry.register(Box::new(g.clone()))?;
            g
        },
        oldest_due_seconds: {
            let g = GaugeVec::new(
                Opts::new(
                    "kiln_queue_oldest_due_seconds",
                    "Age of the oldest job that is due and not yet started, by queue (0: none is due)",
                ),
                &["queue"],
            )?;
            registry.register(Box::new(g.clone()))?;
            g
        },
        workers_busy: gauge(Opts::new(
            "kiln_worker_jobs_running",
            "Jobs this process is running now (one series per process: Prometheus's instance label tells them apart)",
        ))?,
        workers_alive: unlabelled(Opts::new(
            "kiln_workers_alive",
            "Registered worker processes whose heartbeat is current (stalled ones included), as this process's maintenance loop last read the registry",
        ))?,
        workers_stalled: unlabelled(Opts::new(
            "kiln_workers_stalled",
            "Worker processes that heartbeat and have free slots but claimed nothing for a while although jobs of their queues are due",
        ))?,
        build_info: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "kiln_build_info",
                    "Always 1; the version of kiln this process runs",
                ),
                &["version"],
            )?;
            registry.register(Box::new(g.clone()))?;
            g
        },
        provider_rate_limit_wait_seconds: histogram(
            "kiln_provider_rate_limit_wait_seconds",
            "Time a provider call waited for its shared rate or concurrency limit",
            &["provider"],
        )?,
        enqueue_group_size: {
            let h = prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_enqueue_group_size",
                    "Generations written per transaction by group commit (1: the request was alone)",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?;
            registry.register(Box::new(h.clone()))?;
            h
        },
        registry,
    };
    Ok(metrics)
}

/// The outcomes `kiln_jobs_finished_total` counts.
pub const OUTCOMES: [&str; 7] = [
    "succeeded",
    "retried",
    "failed",
    "cancelled",
    "released",
    "snoozed",
    "lost",
];

/// The states `kiln_queue_depth` reports for every queue.
pub const DEPTH_STATES: [crate::JobState; 5] = [
    crate::JobState::Scheduled,
    crate::JobState::Available,
    crate::JobState::Running,
    crate::JobState::Retryable,
    crate::JobState::Failed,
];

/// Every series of a known kind at 0, and the build info, so the first
/// scrape shows them all: a rate over a series that appears only with its
/// first job misses that job, and a dashboard cannot tell a quiet kind
/// from a missing one.
fn preset(m: &Metrics) {
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for kind in kiln_jobs::KINDS.iter().map(|k| k.kind) {
        m.jobs_enqueued.with_label_values(&[kind]);
        m.jobs_started.with_label_values(&[kind]);
        m.job_retries.with_label_values(&[kind]);
        m.leases_rescued.with_label_values(&[kind]);
        m.run_seconds.with_label_values(&[kind]);
        m.queue_wait_seconds.with_label_values(&[kind]);
        for outcome in OUTCOMES {
            m.jobs_finished.with_label_values(&[kind, outcome]);
        }
    }
    for class in kiln_jobs::DataClass::ALL {
        m.retention_purged.with_label_values(&[class.as_str()]);
    }
}

/// The provider call series at 0 for these provider keys (the outcomes
/// `ok`, `retryable`, `refused`); called by processes that call providers
/// (workers) before they serve `/metrics`.
pub fn show_provider_series(providers: &[&str]) {
    let m = metrics();
    for provider in providers {
        for outcome in ["ok", "retryable", "refused"] {
            m.provider_requests.with_label_values(&[provider, outcome]);
        }
        m.provider_request_seconds.with_label_values(&[provider]);
        m.provider_rate_limit_wait_seconds
            .with_label_values(&[provider]);
    }
}

/// The payment notification series at 0 for the configured merchant and
/// every outcome (`outcomes`); called by processes that serve the API.
pub fn show_payment_series(provider: &str, outcomes: &[&str]) {
    let m = metrics();
    for outcome in outcomes {
        m.payment_notifications
            .with_label_values(&[provider, outcome]);
    }
}

/// Every queue's gauges at 0 until the maintenance loop sets them; called
/// by processes that run one (workers) before they serve `/metrics`. Other
/// processes do not export these database-wide gauges at all, rather than
/// a 0 that is never refreshed.
pub fn show_queue_gauges() {
    let m = metrics();
    for queue in kiln_jobs::catalogue::queues() {
        for state in DEPTH_STATES {
            m.queue_depth.with_label_values(&[queue, state.as_str()]);
        }
        m.oldest_due_seconds.with_label_values(&[queue]);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = build().expect("metric definitions are valid and registered once");
    preset(&m);
    m
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&METRICS.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}
