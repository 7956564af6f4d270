//! Writes successes in batches: one statement for every job that finished
//! since the last write, instead of one round-trip per job.

use std::time::Duration;

use kiln_store::{Completion, Store};
use tokio::sync::mpsc;

pub(crate) const BATCH: usize = 256;

/// Runs until every sender is dropped, then flushes what is left.
pub(crate) async fn run(store: Store, mut done: mpsc::Receiver<(String, Completion)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while done.recv_many(&mut batch, BATCH).await > 0 {
        let completions: Vec<Completion> = batch.iter().map(|(_, c)| c.clone()).collect();
        let mut delay = Duration::from_millis(50);
        let accepted = loop {
            match store.complete(&completions).await {
                Ok(n) => break Some(n),
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
                    break None;
                }
            }
        };
        let m = kiln_store::metrics::metrics();
        match accepted {
            None => {
                batch.clear();
                continue;
            }
            Some(n) if (n as usize) < completions.len() => tracing::warn!(
                stale = completions.len() - n as usize,
                "some successes came from claims that were no longer current; ignored"
            ),
            Some(_) => {}
        }
        for (kind, _) in &batch {
            m.jobs_finished
                .with_label_values(&[kind, "succeeded"])
                .inc();
        }
        batch.clear();
    }
}
