//! The worker registry: every `kiln work` process registers itself, says
//! at each heartbeat how many jobs it runs and when it last claimed one,
//! and deregisters on a clean stop. Operators list them with a status:
//! `alive`, `stalled` (it heartbeats, has free slots, but has claimed
//! nothing for a while although jobs of its queues are due), `stopping`
//! (shutting down: it claims nothing on purpose) or `lost` (no
//! heartbeat for longer than its lease: its jobs' leases have expired, and
//! the lease rescue of any worker's maintenance loop takes them back).

use std::{collections::BTreeMap, fmt, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::{
    JobState, StoreError,
    operators::{LiveCount, QueueSettings},
};

/// How long a lost worker's row stays listed before the maintenance loop
/// deletes it.
pub const PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// A worker process's id: the `lease_owner` of the jobs it claims.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a process says about itself when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorker {
    pub id: WorkerId,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub started_at: DateTime<Utc>,
    /// No heartbeat for this long: lost (its lease, so its jobs' leases
    /// have expired too).
    pub lost_after: Duration,
    /// Free slots and no claim for this long while its queues have jobs
    /// due for as long: stalled. Longer than a heartbeat interval plus a
    /// poll, so a healthy process has claimed and said so by then.
    pub stalled_after: Duration,
}

/// What a process says at each heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beat {
    pub at: DateTime<Utc>,
    /// Jobs it runs now.
    pub running: u32,
    /// When it last claimed a job; None: never.
    pub last_claim_at: Option<DateTime<Utc>>,
    /// It is shutting down: no more claims, running jobs finishing.
    pub stopping: bool,
}

/// A `workers` row.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub worker: NewWorker,
    pub heartbeat_at: DateTime<Utc>,
    pub running: u32,
    pub last_claim_at: Option<DateTime<Utc>>,
    pub stopping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Alive,
    Stalled,
    Stopping,
    Lost,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Alive => "alive",
            WorkerStatus::Stalled => "stalled",
            WorkerStatus::Stopping => "stopping",
            WorkerStatus::Lost => "lost",
        }
    }
}

/// A registered worker as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub row: WorkerRow,
    pub status: WorkerStatus,
}

/// The registry's SQL; engines implement it, callers pass the times (so
/// tests control them).
#[async_trait]
pub trait Workers: Send + Sync {
    /// Inserts the process's row, or replaces it (a process that was
    /// pruned while stopped registers again).
    async fn register_worker(&self, w: &NewWorker, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records a heartbeat; false when the row is gone (pruned).
    async fn worker_heartbeat(&self, id: &WorkerId, beat: Beat) -> Result<bool, StoreError>;
    /// Removes the row (a clean stop); false when there was none.
    async fn deregister_worker(&self, id: &WorkerId) -> Result<bool, StoreError>;
    /// Every row, oldest process first.
    async fn worker_rows(&self) -> Result<Vec<WorkerRow>, StoreError>;
    /// Deletes the rows of workers lost (heartbeat older than their
    /// `lost_after`) before `before`; returns how many.
    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The status of each row at `now`, from the backlog (`live`) and the
/// queue settings: paused queues and queues at their concurrency limit do
/// not count as having due jobs, since no worker may claim them.
pub fn classify(
    now: DateTime<Utc>,
    rows: Vec<WorkerRow>,
    live: &[LiveCount],
    settings: &[QueueSettings],
) -> Vec<Worker> {
    let mut oldest_due: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut running: BTreeMap<&str, i64> = BTreeMap::new();
    for l in live {
        if let Some(at) = l.oldest_due_at {
            let e = oldest_due.entry(&l.queue).or_insert(at);
            *e = (*e).min(at);
        }
        if l.state == JobState::Running {
            *running.entry(&l.queue).or_default() += l.count;
        }
    }
    let claimable = |queue: &str| {
        let s = settings.iter().find(|s| s.name == queue);
        let paused = s.is_some_and(|s| s.paused);
        let full = s
            .and_then(|s| s.concurrency_limit)
            .is_some_and(|max| running.get(queue).copied().unwrap_or(0) >= i64::from(max));
        !paused && !full
    };
    rows.into_iter()
        .map(|row| {
            let w = &row.worker;
            let status = if now - row.heartbeat_at > delta(w.lost_after) {
                WorkerStatus::Lost
            } else if row.stopping {
                WorkerStatus::Stopping
            } else {
                let since = now - delta(w.stalled_after);
                let idle = row.last_claim_at.unwrap_or(w.started_at) < since;
                let free = row.running < w.concurrency;
                let due = w.queues.iter().any(|q| {
                    claimable(q) && oldest_due.get(q.as_str()).is_some_and(|at| *at < since)
                });
                if idle && free && due {
                    WorkerStatus::Stalled
                } else {
                    WorkerStatus::Alive
                }
            };
            Worker { row, status }
        })
        .collect()
}
