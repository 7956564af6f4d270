use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use cron::Schedule;
use kiln_store::{Store, metrics::metrics, schedules::SlotFired};
use tokio_util::sync::CancellationToken;

use crate::Plan;

/// How long a replica waits before asking the database again after it
/// could not fire a slot (the database is down, say).
const RETRY: Duration = Duration::from_secs(2);

/// Fires every plan's slots as they come, until `stop`. With `catch_up`,
/// a plan whose latest slot passed while no replica ran fires that one
/// slot at start.
pub async fn run(store: Store, plans: Vec<Plan>, catch_up: bool, stop: CancellationToken) {
    let runs = plans
        .into_iter()
        .map(|plan| run_plan(store.clone(), plan, catch_up, stop.clone()));
    futures::future::join_all(runs).await;
}

async fn run_plan(store: Store, plan: Plan, catch_up: bool, stop: CancellationToken) {
    // Present from the first scrape.
    metrics()
        .cron_fires
        .with_label_values(&[plan.name])
        .inc_by(0);
    metrics()
        .cron_skips
        .with_label_values(&[plan.name])
        .inc_by(0);
    if catch_up {
        let Some(()) = fire_until_done(&store, &plan, None, &stop).await else {
            return;
        };
    }
    let mut last = Utc::now();
    loop {
        // Never before the slot just fired, should the timer wake early.
        let Some(next) = plan.schedule.after(&last.max(Utc::now())).next() else {
            return;
        };
        if !sleep_until(next, &stop).await {
            return;
        }
        if fire_until_done(&store, &plan, Some(next), &stop)
            .await
            .is_none()
        {
            return;
        }
        last = next;
    }
}

/// Fires `slot` (or, at start, the plan's latest due slot if it is later
/// than the last one handled). While the database cannot answer, retries,
/// each time with the latest slot due by then: a long outage ends in one
/// fire, not a burst. None when stopped.
async fn fire_until_done(
    store: &Store,
    plan: &Plan,
    slot: Option<DateTime<Utc>>,
    stop: &CancellationToken,
) -> Option<()> {
    let mut slot = slot;
    loop {
        let attempt = match slot {
            Some(slot) => fire(store, plan, slot).await.map(|_| ()),
            None => catch_up(store, plan, Utc::now()).await.map(|_| ()),
        };
        match attempt {
            Ok(()) => return Some(()),
            Err(e) => {
                tracing::error!(plan = plan.name, error = %e, "could not fire a cron slot; will retry");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(RETRY) => {}
        }
        if slot.is_some() {
            slot = latest_due(&plan.schedule, Utc::now()).or(slot);
        }
    }
}

/// At start: fires the latest slot due by `now` when it is later than the
/// last slot any replica handled: one slot, however many were missed. A
/// plan that never fired starts with its next slot. None when nothing was
/// missed.
pub async fn catch_up(
    store: &Store,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Option<SlotFired>, kiln_store::StoreError> {
    let last = store
        .plan_records()
        .await?
        .into_iter()
        .find(|r| r.plan == plan.name)
        .and_then(|r| r.last_slot);
    let (Some(last), Some(latest)) = (last, latest_due(&plan.schedule, now)) else {
        return Ok(None);
    };
    if latest <= last {
        return Ok(None);
    }
    tracing::info!(plan = plan.name, %latest, %last, "catching up the latest missed slot");
    fire(store, plan, latest).await.map(Some)
}

/// Asks the database to fire `plan`'s `slot` (see `Store::fire_slot`).
pub async fn fire(
    store: &Store,
    plan: &Plan,
    slot: DateTime<Utc>,
) -> Result<SlotFired, kiln_store::StoreError> {
    let job = (plan.job)(slot)
        .map_err(kiln_store::StoreError::Corrupt)?
        .idempotency_key(format!("{}:{}", plan.name, slot.timestamp()));
    let fired = store.fire_slot(plan.name, slot, job).await?;
    match fired {
        SlotFired::Fired(id) => {
            tracing::info!(plan = plan.name, %slot, job_id = %id, "scheduled job enqueued")
        }
        SlotFired::AlreadyHandled => {
            tracing::debug!(plan = plan.name, %slot, "slot handled by another scheduler")
        }
        SlotFired::StillRunning(id) => {
            tracing::warn!(plan = plan.name, %slot, running = %id, "slot skipped: the plan's previous job has not finished")
        }
    }
    Ok(fired)
}

/// The latest slot at or before `now`.
pub fn latest_due(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Slots are whole seconds: every slot <= now is before the next second.
    let after = now + TimeDelta::milliseconds(1);
    schedule.after(&after).rev().find(|slot| *slot <= now)
}

/// Sleeps until `at`; false when stopped first.
async fn sleep_until(at: DateTime<Utc>, stop: &CancellationToken) -> bool {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The next `n` fire times of a schedule after `now`, for `kiln schedule --list`.
pub fn next_fires(schedule: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    schedule.after(&now).take(n).collect()
}
