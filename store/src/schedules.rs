//! Cron plans' slots. Every scheduler replica computes the same slots; the
//! database decides which replica fires each one, under the plan's row
//! lock in `cron_plans`: a slot fires once, never after a later slot of its
//! plan, and not while the plan's previous job is still unfinished (an
//! overrunning run is not joined by a second copy).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    StoreError,
    codec::{Id, Time},
};

/// What became of a slot a replica asked to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFired {
    /// This call enqueued the slot's job.
    Fired(Uuid),
    /// The slot, or a later one, was handled already (by any replica).
    AlreadyHandled,
    /// The plan's previous job has not finished: the slot is skipped, and
    /// recorded as handled so no other replica fires it either.
    StillRunning(Uuid),
}

/// A plan as the database remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    pub plan: String,
    /// The last slot fired or skipped.
    pub last_slot: Option<DateTime<Utc>>,
    /// The job the plan last enqueued.
    pub last_job: Option<Uuid>,
}

/// The reads of the scheduler's records (the write, `fire_slot`, is a
/// [`JobWrites`](crate::JobWrites) method: it enqueues).
#[async_trait]
pub trait Schedules: Send + Sync + 'static {
    /// Every plan that has handled a slot, by name.
    async fn plan_records(&self) -> Result<Vec<PlanRecord>, StoreError>;
}

/// The row both engines read under the lock: the plan's record and whether
/// its last job is still in `jobs` (unfinished).
#[derive(sqlx::FromRow)]
pub(crate) struct PlanLock {
    pub last_slot: Option<Time>,
    pub running: Option<Id>,
}

/// What to do with `slot`, given the plan's locked record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Fire,
    Skip(SlotFired),
}

pub(crate) fn decide(lock: &PlanLock, slot: DateTime<Utc>) -> Decision {
    if lock.last_slot.is_some_and(|last| last.0 >= slot) {
        return Decision::Skip(SlotFired::AlreadyHandled);
    }
    match lock.running {
        Some(job) => Decision::Skip(SlotFired::StillRunning(job.0)),
        None => Decision::Fire,
    }
}

/// Slots are kept to the millisecond (SQLite's resolution), so both
/// engines compare the same instants.
pub(crate) fn slot_ms(slot: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(slot.timestamp_millis()).unwrap_or(slot)
}

pub(crate) fn record(
    (plan, last_slot, last_job): (String, Option<Time>, Option<Id>),
) -> PlanRecord {
    PlanRecord {
        plan,
        last_slot: last_slot.map(|t| t.0),
        last_job: last_job.map(|j| j.0),
    }
}
