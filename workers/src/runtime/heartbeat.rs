//! Keeps this process's leases and its registry row alive, and stops
//! handlers whose job was cancelled or taken over.

use std::{sync::Arc, time::Duration};

use kiln_store::{Store, StoreEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{inflight::InFlight, presence::Presence};

pub(crate) async fn run(
    store: Store,
    inflight: Arc<InFlight>,
    presence: Arc<Presence>,
    every: Duration,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut events = store.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => match event {
                // Cancellation of a running job: stop its handler now rather
                // than at the next heartbeat.
                Ok(StoreEvent::CancelRequested(id)) => {
                    inflight.stop(id);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => stop.cancelled().await,
            },
            _ = tick.tick() => {
                presence.beat().await;
                let leases = inflight.leases();
                if leases.is_empty() {
                    continue;
                }
                match store.heartbeat(&leases, lease).await {
                    Ok(to_stop) => {
                        for l in to_stop {
                            inflight.stop_lease(l);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, jobs = leases.len(),
                        "heartbeat failed; leases not extended"),
                }
            }
        }
    }
}
