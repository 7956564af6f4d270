//! Periodic upkeep every worker process does (it is idempotent, so many
//! processes doing it is harmless): rescue jobs whose worker was lost,
//! make sure finished jobs have somewhere to go in the coming days, and
//! refresh the queue gauges with one query (and the overdue subject
//! requests with another), and drop lost workers from the registry.

use kiln_store::{JobState, Store, workers::PRUNE_AFTER};
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

pub(crate) async fn run(store: Store, config: WorkerConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(config.maintenance_interval_ms);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        rescue(&store, config.crash_loop_cap).await;
        // Without it, finished jobs still land (in the DEFAULT partition),
        // but retention then deletes them row by row.
        if let Err(e) = store.ensure_finished_partitions().await {
            tracing::warn!(error = %e, "creating finished-job partitions failed");
        }
        refresh_gauges(&store).await;
        prune_workers(&store).await;
    }
}

pub(crate) async fn rescue(store: &Store, crash_cap: u32) {
    match store.rescue_expired(crash_cap).await {
        Ok(rescued) => {
            let m = kiln_store::metrics::metrics();
            for r in &rescued {
                m.leases_rescued.with_label_values(&[&r.kind]).inc();
                // A rescue that ends the job is its final outcome.
                match r.state {
                    JobState::Failed => m
                        .jobs_finished
                        .with_label_values(&[&r.kind, "failed"])
                        .inc(),
                    JobState::Cancelled => m
                        .jobs_finished
                        .with_label_values(&[&r.kind, "cancelled"])
                        .inc(),
                    _ => {}
                }
                tracing::warn!(job_id = %r.id, kind = %r.kind, state = r.state.as_str(),
                    "rescued a job whose worker was lost");
            }
        }
        Err(e) => tracing::warn!(error = %e, "rescuing expired leases failed"),
    }
}

async fn refresh_gauges(store: &Store) {
    // One indexed count of the open requests that are due.
    match store.overdue_requests(chrono::Utc::now()).await {
        Ok(n) => kiln_store::metrics::metrics()
            .subject_requests_overdue
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "counting overdue subject requests failed"),
    }
    let stats = match store.queue_stats().await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "reading queue depths failed");
            return;
        }
    };
    let m = kiln_store::metrics::metrics();
    m.queue_depth.reset();
    m.oldest_due_seconds.reset();
    let mut oldest: std::collections::HashMap<&str, f64> = Default::default();
    for s in &stats {
        m.queue_depth
            .with_label_values(&[s.queue.as_str(), s.state.as_str()])
            .set(s.count);
        if let Some(age) = s.oldest_due_age {
            let e = oldest.entry(s.queue.as_str()).or_default();
            *e = e.max(age.as_secs_f64());
        }
    }
    for s in &stats {
        if !s.state.is_final() && s.state != JobState::Running {
            m.oldest_due_seconds
                .with_label_values(&[s.queue.as_str()])
                .set(oldest.get(s.queue.as_str()).copied().unwrap_or(0.0));
        }
    }
}

/// Deletes the registry rows of workers lost over an hour ago.
async fn prune_workers(store: &Store) {
    let before = chrono::Utc::now()
        - chrono::TimeDelta::from_std(PRUNE_AFTER).unwrap_or(chrono::TimeDelta::MAX);
    match store.prune_workers(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(workers = n, "removed lost workers from the registry"),
        Err(e) => tracing::warn!(error = %e, "pruning the worker registry failed"),
    }
}
