//! What a worker process may claim. `worker.concurrency` handlers run at
//! once; besides those, the process claims ahead by as many jobs as it
//! finishes during a claim's round trip (its finish rate times the round
//! trip). Short jobs then find
//! the next batch already claimed when their slot frees, instead of the
//! slot idling through a claim's round trip (with no-op jobs a process
//! ran `concurrency / round trip` jobs a second, about 12k at 128 slots).
//! Long jobs rarely finish during a round trip, so nothing is claimed
//! ahead of them and no process hoards work that another could start.
//! At most `concurrency` jobs wait (one behind each running slot), and
//! waiting jobs are heartbeated like running ones, so a switch from short
//! to long jobs cannot let a claimed job's lease run out while it waits.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Slots {
    concurrency: usize,
    /// The most jobs claimed ahead: `worker.max_batch_size`, at most
    /// `concurrency`.
    most_ahead: usize,
    held: Mutex<Held>,
    /// Told whenever jobs are handed back or finish.
    freed: Notify,
    /// Jobs whose handler has run, ever: claimers read their finish rate
    /// off it.
    finished: AtomicU64,
    /// `concurrency` permits: a claimed job waits for one before it runs.
    pub running: Arc<Semaphore>,
}

struct Held {
    /// Jobs claimed and not finished, plus jobs asked for by claims in
    /// flight.
    count: usize,
    /// How many jobs to claim ahead of the running slots.
    ahead: usize,
}

impl Slots {
    pub fn new(concurrency: u32, most_ahead: u32) -> Arc<Slots> {
        Arc::new(Slots {
            concurrency: concurrency as usize,
            most_ahead: most_ahead.min(concurrency) as usize,
            held: Mutex::new(Held { count: 0, ahead: 0 }),
            freed: Notify::new(),
            finished: AtomicU64::new(0),
            running: Arc::new(Semaphore::new(concurrency as usize)),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes up to `most` of the room free now; returns how many.
    pub fn try_take(&self, most: usize) -> usize {
        let mut held = self.held();
        let room = (self.concurrency + held.ahead).saturating_sub(held.count);
        let taken = room.min(most);
        held.count += taken;
        taken
    }

    /// Waits until some room is free, then takes up to `most` of it.
    pub async fn take(&self, most: usize) -> usize {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a release in between wakes us.
            freed.as_mut().enable();
            let taken = self.try_take(most);
            if taken > 0 {
                return taken;
            }
            freed.await;
        }
    }

    /// Waits until more room is free, for at most until `deadline`.
    pub async fn wait_for_room(&self, deadline: tokio::time::Instant) {
        let _ = tokio::time::timeout_at(deadline, self.freed.notified()).await;
    }

    /// Gives back room taken and not used (a claim that came back short).
    pub fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.held().count -= n;
        self.freed.notify_waiters();
    }

    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// About `finishing` jobs end during one claim's round trip: claim that
    /// many ahead (a running average, so one burst does not swing it).
    pub fn observe_round_trip(&self, finishing: f64) {
        let sample = (finishing as usize).min(self.most_ahead);
        let mut held = self.held();
        held.ahead = (held.ahead + sample) / 2;
    }

    /// The room one claimed job holds until it finishes or is handed back.
    pub fn hold(self: &Arc<Slots>) -> Hold {
        Hold {
            slots: self.clone(),
            running: None,
        }
    }

    #[cfg(test)]
    fn ahead(&self) -> usize {
        self.held().ahead
    }
}

/// One claimed job's share of [`Slots`]: released when dropped, after the
/// job finished or was handed back unstarted.
pub(crate) struct Hold {
    slots: Arc<Slots>,
    running: Option<OwnedSemaphorePermit>,
}

impl Hold {
    /// The job is about to run in this running slot.
    pub fn run_in(&mut self, slot: OwnedSemaphorePermit) {
        self.running = Some(slot);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.running.take().is_some() {
            self.slots.finished.fetch_add(1, Ordering::Relaxed);
        }
        self.slots.give_back(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_claimed_ahead_until_jobs_finish_during_round_trips() {
        let slots = Slots::new(4, 100);
        assert_eq!(slots.try_take(10), 4);
        assert_eq!(slots.try_take(10), 0);
        // Long jobs: none finished while a claim was in flight.
        slots.observe_round_trip(0.0);
        assert_eq!(slots.try_take(10), 0);
        slots.give_back(4);
        assert_eq!(slots.try_take(10), 4);
    }

    #[test]
    fn short_jobs_earn_room_ahead_up_to_the_cap() {
        let slots = Slots::new(200, 100);
        for _ in 0..10 {
            slots.observe_round_trip(1_000.0);
        }
        assert!(slots.ahead() <= 100);
        assert!(slots.ahead() > 90, "ahead {}", slots.ahead());
        assert_eq!(slots.try_take(1_000), 200 + slots.ahead());
        // And it decays once jobs stop finishing quickly.
        for _ in 0..10 {
            slots.observe_round_trip(0.0);
        }
        assert_eq!(slots.ahead(), 0);
    }

    #[test]
    fn at_most_one_job_waits_behind_each_running_slot() {
        let slots = Slots::new(4, 100);
        slots.observe_round_trip(1_000.0);
        slots.observe_round_trip(1_000.0);
        assert_eq!(slots.try_take(1_000), 4 + 3);
        for _ in 0..10 {
            slots.observe_round_trip(1_000.0);
        }
        assert!(slots.ahead() <= 4, "ahead {}", slots.ahead());
    }

    #[tokio::test]
    async fn a_finished_job_frees_its_room_and_counts() {
        let slots = Slots::new(1, 10);
        assert_eq!(slots.take(5).await, 1);
        let mut hold = slots.hold();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(5).await })
        };
        let permit = slots.running.clone().acquire_owned().await.unwrap();
        hold.run_in(permit);
        drop(hold);
        assert_eq!(waiter.await.unwrap(), 1);
        assert_eq!(slots.finished(), 1);
    }
}
