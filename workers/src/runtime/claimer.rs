//! Claims jobs whenever this process has free slots: in batches sized to the
//! free slots, at once when woken by an enqueue (LISTEN/NOTIFY on Postgres),
//! otherwise on a slow fallback poll. Under a backlog the batches grow, up
//! to `max_batch_size`, so a busy queue costs fewer round trips per job.

use std::{sync::Arc, time::Duration};

use kiln_store::{Store, StoreEvent};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::backend::Claimed;
use crate::WorkerConfig;

/// How long a claim waits for more free slots when there is a backlog:
/// long enough for no-op jobs to hand back a batch, short next to any real
/// job, so long-running jobs never leave slots idle for long.
const LINGER: Duration = Duration::from_millis(2);

pub(crate) struct Claimer {
    pub store: Store,
    pub worker_id: String,
    pub config: WorkerConfig,
    pub queues: Vec<String>,
    pub slots: Arc<Semaphore>,
    pub out: mpsc::Sender<Claimed>,
    pub stop: CancellationToken,
    /// Told of every claim that got a job, for the worker registry.
    pub last_claim: Arc<super::presence::LastClaim>,
}

impl Claimer {
    pub async fn run(self) {
        let mut events = self.store.subscribe();
        let mut error_delay = Duration::from_millis(100);
        // After a full claim there is a backlog: linger a moment until at
        // least `batch_size` slots are free, so a busy queue is not claimed
        // one freed slot per round trip. Otherwise claim as soon as one slot
        // is free, for the lowest pickup latency. Either way the claim takes
        // every slot free by then, up to `max_batch_size`: the batch follows
        // the backlog.
        let mut backlog = false;
        let base = self.config.batch_size as usize;
        let most = self.config.max_batch_size as usize;
        loop {
            let first = tokio::select! {
                _ = self.stop.cancelled() => break,
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let mut slots = vec![first];
            self.take_free(&mut slots, most);
            if backlog && slots.len() < base {
                let linger_until = tokio::time::Instant::now() + LINGER;
                while slots.len() < base {
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep_until(linger_until) => break,
                        slot = self.slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slots.push(slot),
                            Err(_) => break,
                        },
                    }
                }
                self.take_free(&mut slots, most);
            }
            // Wake-ups that arrive from here on mean "look again".
            drain(&mut events);
            let asked = slots.len();
            let claimed = match self
                .store
                .claim(
                    &self.worker_id,
                    &self.queues,
                    asked as u32,
                    self.config.lease_ms,
                )
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = error_delay.as_millis() as u64,
                        "claiming jobs failed; retrying");
                    drop(slots);
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(error_delay) => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            error_delay = Duration::from_millis(100);
            let got = claimed.len();
            if got > 0 {
                self.last_claim.now();
            }
            backlog = got == asked;
            for (job, slot) in claimed.into_iter().zip(slots.drain(..)) {
                if let Err(unsent) = self.out.send(Claimed { job, slot }).await {
                    // The worker is gone: hand the job back untouched.
                    let lease = unsent.0.job.lease;
                    if let Err(e) = self.store.release(&[lease]).await {
                        tracing::error!(job_id = %lease.id, error = %e, "could not hand back a job");
                    }
                }
            }
            drop(slots);
            // Only an empty claim means the queues are drained: a short one may
            // just have skipped rows other claimers were locking.
            if got == 0 && !self.wait_for_work(&mut events).await {
                break;
            }
        }
    }

    /// Adds every slot free right now to `slots`, up to `most`.
    fn take_free(&self, slots: &mut Vec<tokio::sync::OwnedSemaphorePermit>, most: usize) {
        while slots.len() < most {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
    }

    /// Sleeps until an enqueue on one of our queues, a fallback poll tick, or
    /// shutdown (false).
    async fn wait_for_work(&self, events: &mut broadcast::Receiver<StoreEvent>) -> bool {
        let deadline = tokio::time::sleep(self.config.poll_interval_ms);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = &mut deadline => return true,
                event = events.recv() => match event {
                    Ok(StoreEvent::JobsAvailable(None)) => return true,
                    Ok(StoreEvent::JobsAvailable(Some(q))) if self.queues.contains(&q) => return true,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return true;
                    }
                },
            }
        }
    }
}

fn drain(events: &mut broadcast::Receiver<StoreEvent>) {
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
}
