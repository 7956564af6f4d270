use chrono::{DateTime, Utc};
use kiln_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Plan;

/// Fires every plan's slots as they come, until `stop`.
pub async fn run(store: Store, plans: Vec<Plan>, stop: CancellationToken) {
    let mut since = Utc::now();
    loop {
        let next = plans
            .iter()
            .filter_map(|p| p.schedule.after(&since).next())
            .min();
        let Some(next) = next else { return };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        if fire_due(&store, &plans, since, now).await {
            since = now;
        } else {
            // Keep the missed slots and try them again shortly.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }
}

/// Enqueues each plan's slots in (`since`, `until`]. A slot already
/// enqueued (by this or another replica) is not enqueued again. Returns
/// false when some slot could not be enqueued.
pub async fn fire_due(
    store: &Store,
    plans: &[Plan],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> bool {
    let mut all_fired = true;
    for plan in plans {
        for slot in plan.schedule.after(&since).take_while(|t| *t <= until) {
            let job =
                plan.job
                    .clone()
                    .idempotency_key(format!("{}:{}", plan.name, slot.timestamp()));
            match store.enqueue(job).await {
                Ok(e) if e.created => {
                    tracing::info!(plan = plan.name, %slot, job_id = %e.id, "scheduled job enqueued")
                }
                Ok(_) => {
                    tracing::debug!(plan = plan.name, %slot, "slot already enqueued by another scheduler")
                }
                Err(e) => {
                    all_fired = false;
                    tracing::error!(plan = plan.name, %slot, error = %e, "could not enqueue scheduled job; will retry")
                }
            }
        }
    }
    all_fired
}
