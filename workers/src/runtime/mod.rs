//! The worker runtime: apalis drives a [`backend::KilnBackend`] fed by the
//! [`claimer`], runs each job through [`service::RunJob`], and kiln's own
//! tasks keep leases alive ([`heartbeat`]), write successes in batches
//! ([`completer`]) and rescue lost jobs ([`maintenance`]).

mod backend;
mod claimer;
pub(crate) mod completer;
mod heartbeat;
pub(crate) mod inflight;
mod maintenance;
mod presence;
pub(crate) mod service;
mod slots;

use std::sync::{Arc, Mutex};

use apalis_core::{
    monitor::Monitor,
    worker::{builder::WorkerBuilder, ext::parallelize::ParallelizeExt},
};
use kiln_store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSemaphore};

use crate::{Registry, WorkerConfig, WorkerConfigError};
use backend::{Claimed, KilnBackend};
pub use presence::hostname;

/// Why the worker runtime did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] WorkerConfigError),
    #[error("worker runtime failed: {0}")]
    Runtime(String),
}

/// Runs jobs until `shutdown` is cancelled, then stops claiming, lets
/// running jobs finish within the grace period, hands the rest back without
/// spending an attempt, and returns once every outcome is written.
pub async fn run(
    store: Store,
    registry: Registry,
    config: WorkerConfig,
    worker_id: String,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    kiln_store::metrics::show_queue_gauges();
    kiln_store::metrics::show_provider_series(&kiln_providers::PROVIDER_KEYS);
    // The providers' rate-limit waits go to kiln's metrics.
    kiln_providers::limits::observe_waits_with(observe_provider_wait);
    kiln_providers::limits::observe_calls_with(observe_provider_call);
    let queues = config.queue_names();
    tracing::info!(worker = %worker_id, ?queues, concurrency = config.concurrency,
        backend = store.backend_name(), "worker starting");

    let slots = slots::Slots::new(config.concurrency, config.max_batch_size);
    let inflight = Arc::new(inflight::InFlight::default());
    // Room for every job the claimers may hold, so a claim is never held up
    // handing its jobs over.
    let (claimed_tx, claimed_rx) =
        mpsc::channel::<Claimed>((config.concurrency + config.max_batch_size) as usize);
    let claimed_rx = Arc::new(Mutex::new(claimed_rx));
    let (completed_tx, completed_rx) = mpsc::channel(completer::BATCH * 4);
    let grace_over = CancellationToken::new();
    let background = CancellationToken::new();
    let presence = Arc::new(presence::Presence::new(
        store.clone(),
        &config,
        &worker_id,
        queues.clone(),
        inflight.clone(),
        shutdown.clone(),
    ));
    presence.register().await;

    // Upkeep outlives the claimer: leases of running jobs must stay alive
    // through the grace period.
    let heartbeat = tokio::spawn(heartbeat::run(
        store.clone(),
        inflight.clone(),
        presence.clone(),
        config.heartbeat_interval(),
        config.lease_ms,
        background.clone(),
    ));
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        config.clone(),
        background.clone(),
    ));
    let completer = tokio::spawn(completer::run(store.clone(), completed_rx));
    // Several claimers share the slots, so one claim's round-trip does not
    // leave the workers idle while a batch is in flight.
    let claimers: Vec<_> = (0..config.claimers())
        .map(|_| {
            tokio::spawn(
                claimer::Claimer {
                    store: store.clone(),
                    worker_id: worker_id.clone(),
                    config: config.clone(),
                    queues: queues.clone(),
                    slots: slots.clone(),
                    inflight: inflight.clone(),
                    out: claimed_tx.clone(),
                    stop: shutdown.clone(),
                    last_claim: presence.last_claim.clone(),
                }
                .run(),
            )
        })
        .collect();
    drop(claimed_tx);

    let run_job = service::RunJob {
        store: store.clone(),
        registry,
        inflight: inflight.clone(),
        completed: completed_tx,
        grace_over: grace_over.clone(),
        worker_id: worker_id.clone(),
    };
    let worker_rx = claimed_rx.clone();
    let running = slots.running.clone();
    let name = worker_id.clone();
    let monitor = Monitor::new().register(move |_| {
        WorkerBuilder::new(name.as_str())
            .backend(KilnBackend {
                claimed: worker_rx.clone(),
                running: PollSemaphore::new(running.clone()),
                slot: None,
            })
            // Each job on a task of its own, so jobs use every core.
            .parallelize(tokio::spawn)
            .build(run_job.clone())
    });

    let grace = config.shutdown_grace_ms;
    let grace_timer = {
        let shutdown = shutdown.clone();
        let grace_over = grace_over.clone();
        let inflight = inflight.clone();
        let presence = presence.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Not stalled: it stopped claiming on purpose.
            presence.beat().await;
            tracing::info!(
                running = inflight.len(),
                grace_ms = grace.as_millis() as u64,
                "shutting down: no new claims; waiting for running jobs"
            );
            tokio::time::sleep(grace).await;
            if inflight.len() > 0 {
                tracing::warn!(
                    running = inflight.len(),
                    "grace period over; handing running jobs back"
                );
            }
            grace_over.cancel();
        })
    };

    // On shutdown apalis stops taking jobs from the backend and waits for
    // the running ones; the claimer stops claiming at the same signal.
    let signal = shutdown.clone();
    let monitor_result = monitor
        .run_with_signal(async move {
            signal.cancelled().await;
            Ok(())
        })
        .await;
    for claimer in claimers {
        let _ = claimer.await;
    }
    grace_timer.abort();

    // Jobs claimed but never started: hand them back.
    let leftover: Vec<_> = {
        let mut rx = claimed_rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            inflight.finish(c.job.lease);
            v.push(c.job.lease);
        }
        v
    };
    if !leftover.is_empty()
        && let Err(e) = store.release(&leftover).await
    {
        tracing::error!(error = %e, jobs = leftover.len(),
            "could not hand back unstarted jobs; their leases will expire");
    }

    // Every RunJob clone is gone with the monitor: the completer flushes and ends.
    let _ = completer.await;
    background.cancel();
    let _ = heartbeat.await;
    let _ = maintenance.await;
    presence.deregister().await;
    tracing::info!(worker = %worker_id, "worker stopped");
    monitor_result.map_err(|e| RunError::Runtime(e.to_string()))
}

/// Records how long a provider call waited for the shared rate limits
/// (`kiln_provider_rate_limit_wait_seconds`).
fn observe_provider_call(
    provider: &str,
    outcome: kiln_providers::limits::CallOutcome,
    took: std::time::Duration,
) {
    let m = kiln_store::metrics::metrics();
    m.provider_requests
        .with_label_values(&[provider, outcome.as_str()])
        .inc();
    m.provider_request_seconds
        .with_label_values(&[provider])
        .observe(took.as_secs_f64());
}

fn observe_provider_wait(provider: &str, waited: std::time::Duration) {
    kiln_store::metrics::metrics()
        .provider_rate_limit_wait_seconds
        .with_label_values(&[provider])
        .observe(waited.as_secs_f64());
}
