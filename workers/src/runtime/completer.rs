//! Writes successes in batches: one statement for every job that finished
//! since the last write, instead of one round-trip per job. A few writes
//! may be in flight at once, so one slow commit does not hold back the
//! successes that finish behind it.

use std::{sync::Arc, time::Duration};

use kiln_store::{Completion, Store};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};

pub(crate) const BATCH: usize = 256;
const WRITES_IN_FLIGHT: usize = 4;

/// Runs until every sender is dropped, then flushes what is left.
pub(crate) async fn run(store: Store, mut done: mpsc::Receiver<(String, Completion)>) {
    let writers = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    let mut writes = JoinSet::new();
    loop {
        let Ok(permit) = writers.clone().acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(BATCH);
        if done.recv_many(&mut batch, BATCH).await == 0 {
            break;
        }
        let store = store.clone();
        writes.spawn(async move {
            write(&store, batch).await;
            drop(permit);
        });
        // Reap finished writes so the set does not grow.
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
}

/// Records one batch of successes, retrying a failing database for a few
/// seconds.
pub(crate) async fn write(store: &Store, batch: Vec<(String, Completion)>) {
    let completions: Vec<Completion> = batch.iter().map(|(_, c)| c.clone()).collect();
    let mut delay = Duration::from_millis(50);
    let accepted = loop {
        match store.complete(&completions).await {
            Ok(n) => break n,
            Err(e) if delay <= Duration::from_secs(5) => {
                tracing::warn!(error = %e, jobs = completions.len(), "recording successes failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                // The jobs stay `running` and their leases expire: they
                // will be rescued and run again, not lost.
                tracing::error!(error = %e, jobs = completions.len(),
                    "could not record successes; their leases will expire and they will run again");
                return;
            }
        }
    };
    if (accepted as usize) < completions.len() {
        tracing::warn!(
            stale = completions.len() - accepted as usize,
            "some successes came from claims that were no longer current; ignored"
        );
    }
    let m = kiln_store::metrics::metrics();
    for (kind, _) in &batch {
        m.jobs_finished
            .with_label_values(&[kind, "succeeded"])
            .inc();
    }
}

/// Records one success with its follow-ups, retrying a failing database
/// for a few seconds like [`write`]; given up, the job's lease expires and
/// it runs again (its follow-ups are enqueued only with a recorded
/// success, so never twice).
pub(crate) async fn write_then(
    store: &Store,
    kind: &str,
    completion: &Completion,
    follow_ups: Vec<kiln_store::NewJob>,
) {
    let mut delay = Duration::from_millis(50);
    let recorded = loop {
        match store.complete_then(completion, follow_ups.clone()).await {
            Ok(children) => break children,
            Err(e) if delay <= Duration::from_secs(5) => {
                tracing::warn!(error = %e, job_id = %completion.lease.id,
                    "recording a success with its follow-ups failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, job_id = %completion.lease.id,
                    "could not record a success with its follow-ups; its lease will expire and it will run again");
                return;
            }
        }
    };
    match recorded {
        Some(children) => {
            tracing::debug!(job_id = %completion.lease.id, follow_ups = children.len(), "succeeded with follow-ups");
            kiln_store::metrics::metrics()
                .jobs_finished
                .with_label_values(&[kind, "succeeded"])
                .inc();
        }
        None => tracing::warn!(job_id = %completion.lease.id,
            "a success came from a claim that was no longer current; ignored with its follow-ups"),
    }
}
