//! This process in the worker registry (`kiln_store::workers`): registered
//! as it starts, its running jobs and last claim written at every
//! heartbeat, removed when it stops cleanly.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use kiln_store::{
    Store,
    workers::{Beat, NewWorker, WorkerId},
};

use tokio_util::sync::CancellationToken;

use super::inflight::InFlight;
use crate::WorkerConfig;

/// When this process last claimed a job, as the claimers tell it.
#[derive(Default)]
pub(crate) struct LastClaim(AtomicI64);

impl LastClaim {
    pub fn now(&self) {
        self.0
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<DateTime<Utc>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }
}

pub(crate) struct Presence {
    store: Store,
    /// Shutdown has begun: claims have stopped on purpose.
    stopping: CancellationToken,
    me: NewWorker,
    inflight: Arc<InFlight>,
    pub last_claim: Arc<LastClaim>,
}

/// The bounds this process is judged by. Lost: a lease without a
/// heartbeat, when its jobs' leases have expired too. Stalled: a healthy
/// process claims within a poll of a job coming due and says so at its
/// next heartbeat, so one heartbeat interval and two polls without a
/// claim, while jobs have been due as long, is more than slowness.
pub(crate) fn bounds(config: &WorkerConfig) -> (Duration, Duration) {
    (
        config.lease_ms,
        config.heartbeat_interval() + config.poll_interval_ms * 2,
    )
}

impl Presence {
    pub fn new(
        store: Store,
        config: &WorkerConfig,
        id: &str,
        queues: Vec<String>,
        inflight: Arc<InFlight>,
        stopping: CancellationToken,
    ) -> Presence {
        let (lost_after, stalled_after) = bounds(config);
        Presence {
            store,
            stopping,
            me: NewWorker {
                id: WorkerId(id.to_owned()),
                host: hostname(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                queues,
                concurrency: config.concurrency,
                started_at: Utc::now(),
                lost_after,
                stalled_after,
            },
            inflight,
            last_claim: Arc::default(),
        }
    }

    /// Registers this process. A failure is logged: the next heartbeat
    /// registers it again.
    pub async fn register(&self) {
        if let Err(e) = self.store.register_worker(&self.me, Utc::now()).await {
            tracing::warn!(error = %e, "registering this worker failed; retrying at the next heartbeat");
        }
    }

    pub async fn beat(&self) {
        let beat = Beat {
            at: Utc::now(),
            running: u32::try_from(self.inflight.len()).unwrap_or(u32::MAX),
            last_claim_at: self.last_claim.get(),
            stopping: self.stopping.is_cancelled(),
        };
        match self.store.worker_heartbeat(&self.me.id, beat).await {
            Ok(true) => {}
            // Pruned while this process was stopped (SIGSTOP, a frozen VM).
            Ok(false) => {
                self.register().await;
                if let Err(e) = self.store.worker_heartbeat(&self.me.id, beat).await {
                    tracing::warn!(error = %e, "worker heartbeat failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
        }
    }

    pub async fn deregister(&self) {
        if let Err(e) = self.store.deregister_worker(&self.me.id).await {
            tracing::warn!(error = %e, "deregistering this worker failed; it will show as lost");
        }
    }
}

/// This machine's name, as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}
