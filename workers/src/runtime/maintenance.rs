//! Periodic upkeep every worker process does (it is idempotent, so many
//! processes doing it is harmless): rescue jobs whose worker was lost,
//! make sure finished jobs have somewhere to go in the coming days,
//! refresh the queue and worker gauges (and the overdue subject requests),
//! and drop lost workers from the registry.

use std::collections::BTreeSet;

use kiln_store::{
    JobState, Store,
    workers::{PRUNE_AFTER, WorkerStatus},
};
use tokio_util::sync::CancellationToken;

use crate::WorkerConfig;

pub(crate) async fn run(store: Store, config: WorkerConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(config.maintenance_interval_ms);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Queues this process has gauges for.
    let mut shown = BTreeSet::new();
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
        refresh_gauges(&store, &mut shown).await;
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

/// Sets the queue and worker gauges from one read of the backlog, the
/// dead jobs' index and the (small) worker registry: never the finished
/// history, whose size does not bound a tick's cost.
async fn refresh_gauges(store: &Store, shown: &mut BTreeSet<String>) {
    let m = kiln_store::metrics::metrics();
    let now = chrono::Utc::now();
    // One indexed count of the open requests that are due.
    match store.overdue_requests(now).await {
        Ok(n) => m
            .subject_requests_overdue
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "counting overdue subject requests failed"),
    }
    let live = match store.live_counts(now).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "reading queue depths failed");
            return;
        }
    };
    match store.workers_given(now, &live).await {
        Ok(workers) => {
            let count = |s: WorkerStatus| workers.iter().filter(|w| w.status == s).count() as i64;
            m.workers_stalled
                .with_label_values::<&str>(&[])
                .set(count(WorkerStatus::Stalled));
            m.workers_alive
                .with_label_values::<&str>(&[])
                .set(count(WorkerStatus::Alive) + count(WorkerStatus::Stalled));
        }
        Err(e) => tracing::warn!(error = %e, "reading the worker registry failed"),
    }
    let queues = match store.queue_depths(now, live).await {
        Ok(queues) => queues,
        Err(e) => {
            tracing::warn!(error = %e, "reading queue depths failed");
            return;
        }
    };
    let mut seen = BTreeSet::new();
    for q in &queues {
        for state in kiln_store::metrics::DEPTH_STATES {
            let n = q.counts.get(&state).copied().unwrap_or(0);
            m.queue_depth
                .with_label_values(&[q.queue.as_str(), state.as_str()])
                .set(n);
        }
        m.oldest_due_seconds
            .with_label_values(&[q.queue.as_str()])
            .set(q.oldest_due_age.map_or(0.0, |a| a.as_secs_f64()));
        seen.insert(q.queue.clone());
    }
    // A queue outside the catalogue that emptied: its series go.
    for gone in shown.difference(&seen) {
        for state in kiln_store::metrics::DEPTH_STATES {
            let _ = m
                .queue_depth
                .remove_label_values(&[gone.as_str(), state.as_str()]);
        }
        let _ = m.oldest_due_seconds.remove_label_values(&[gone.as_str()]);
    }
    *shown = seen;
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
