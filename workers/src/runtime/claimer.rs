//! Claims jobs whenever this process has room ([`Slots`]): in batches sized
//! to the room, at once when woken by an enqueue (LISTEN/NOTIFY on Postgres),
//! otherwise on a slow fallback poll. Under a backlog the batches grow, up
//! to `max_batch_size`, so a busy queue costs fewer round trips per job.

use std::{sync::Arc, time::Duration};

use kiln_store::{Store, StoreEvent};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{backend::Claimed, inflight::InFlight, slots::Slots};
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
    pub slots: Arc<Slots>,
    /// Claimed jobs are held (heartbeated, cancellable) from here on.
    pub inflight: Arc<InFlight>,
    pub out: mpsc::Sender<Claimed>,
    pub stop: CancellationToken,
    /// Told of every claim that got a job, for the worker registry.
    pub last_claim: Arc<super::presence::LastClaim>,
}

impl Claimer {
    pub async fn run(self) {
        let mut events = self.store.subscribe();
        let mut error_delay = Duration::from_millis(100);
        // After a full claim there is a backlog: linger a moment until room
        // for at least `batch_size` jobs is free, so a busy queue is not
        // claimed one freed slot per round trip. Otherwise claim as soon as
        // there is room for one, for the lowest pickup latency. Either way
        // the claim takes all the room free by then, up to
        // `max_batch_size`: the batch follows the backlog.
        let mut backlog = false;
        let base = self.config.batch_size as usize;
        let most = self.config.max_batch_size as usize;
        // Where this claimer last read the finish rate from.
        let mut rate_mark = (tokio::time::Instant::now(), self.slots.finished());
        loop {
            let mut asked = tokio::select! {
                _ = self.stop.cancelled() => break,
                taken = self.slots.take(most) => taken,
            };
            if backlog && asked < base {
                let linger_until = tokio::time::Instant::now() + LINGER;
                while asked < base && tokio::time::Instant::now() < linger_until {
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = self.slots.wait_for_room(linger_until) => {}
                    }
                    asked += self.slots.try_take(most - asked);
                }
            }
            if self.stop.is_cancelled() {
                self.slots.give_back(asked);
                break;
            }
            // Wake-ups that arrive from here on mean "look again".
            drain(&mut events);
            let claim_started = tokio::time::Instant::now();
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
                    self.slots.give_back(asked);
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(error_delay) => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            let finished = self.slots.finished();
            let rate =
                (finished - rate_mark.1) as f64 / (now - rate_mark.0).as_secs_f64().max(1e-3);
            self.slots
                .observe_round_trip(rate * (now - claim_started).as_secs_f64());
            rate_mark = (now, finished);
            error_delay = Duration::from_millis(100);
            let got = claimed.len();
            if got > 0 {
                self.last_claim.now();
            }
            backlog = got == asked;
            self.slots.give_back(asked - got);
            for job in claimed {
                let hold = self.slots.hold();
                self.inflight.start(job.lease);
                if let Err(unsent) = self.out.send(Claimed { job, hold }).await {
                    // The worker is gone: hand the job back untouched.
                    let lease = unsent.0.job.lease;
                    self.inflight.finish(lease);
                    if let Err(e) = self.store.release(&[lease]).await {
                        tracing::error!(job_id = %lease.id, error = %e, "could not hand back a job");
                    }
                }
            }
            // Only an empty claim means the queues are drained: a short one may
            // just have skipped rows other claimers were locking.
            if got == 0 && !self.wait_for_work(&mut events).await {
                break;
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
