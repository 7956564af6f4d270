use std::{collections::HashMap, sync::Mutex};

use kiln_store::Lease;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The jobs this process holds now (claimed, waiting for a running slot or
/// running), each with the token that stops its handler. The heartbeat
/// extends their leases; cancellations find their handler here.
///
/// Held by lease (job and fencing token), not by job: a process frozen
/// past its lease may claim the same job again once it wakes, while its
/// stale attempt still winds down. The stale lease's loss must stop only
/// the stale attempt, and its end must not drop the new one from the
/// heartbeat.
#[derive(Default)]
pub(crate) struct InFlight {
    jobs: Mutex<HashMap<(Uuid, i64), (Lease, CancellationToken)>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, i64), (Lease, CancellationToken)>> {
        // A poisoned map is still a valid map: entries are inserted and
        // removed whole.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `lease` from its claim on; the token that stops its handler
    /// (the one given at the claim, if the job waited for a slot, so a
    /// cancellation that came while it waited is not lost).
    pub fn start(&self, lease: Lease) -> CancellationToken {
        self.lock()
            .entry((lease.id, lease.token))
            .or_insert_with(|| (lease, CancellationToken::new()))
            .1
            .clone()
    }

    pub fn finish(&self, lease: Lease) {
        self.lock().remove(&(lease.id, lease.token));
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.lock().values().map(|(l, _)| *l).collect()
    }

    /// Stops every handler running job `id` here (it was cancelled).
    pub fn stop(&self, id: Uuid) -> bool {
        let mut stopped = false;
        for (_, token) in self.lock().values().filter(|(l, _)| l.id == id) {
            token.cancel();
            stopped = true;
        }
        stopped
    }

    /// Stops the handler holding `lease` (it was lost to a rescue or a
    /// cancel), and no other attempt of its job.
    pub fn stop_lease(&self, lease: Lease) {
        if let Some((_, token)) = self.lock().get(&(lease.id, lease.token)) {
            token.cancel();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: Uuid, token: i64) -> Lease {
        Lease {
            id,
            token,
            owned: false,
        }
    }

    #[test]
    fn a_stale_attempt_neither_stops_nor_unlists_the_new_one() {
        let inflight = InFlight::default();
        let job = Uuid::now_v7();
        let (stale, fresh) = (lease(job, 3), lease(job, 4));
        let stale_stop = inflight.start(stale);
        let fresh_stop = inflight.start(fresh);
        assert_eq!(inflight.len(), 2);

        // The heartbeat finds the stale lease lost: only that attempt stops.
        inflight.stop_lease(stale);
        assert!(stale_stop.is_cancelled());
        assert!(!fresh_stop.is_cancelled());
        // It winds down; the new attempt is still heartbeated.
        inflight.finish(stale);
        assert_eq!(inflight.leases(), vec![fresh]);
        // The same claim asked again gets the same token.
        assert!(!inflight.start(fresh).is_cancelled());
    }

    #[test]
    fn a_cancellation_stops_every_attempt_of_its_job() {
        let inflight = InFlight::default();
        let (job, other) = (Uuid::now_v7(), Uuid::now_v7());
        let tokens = [
            inflight.start(lease(job, 1)),
            inflight.start(lease(job, 2)),
            inflight.start(lease(other, 1)),
        ];
        assert!(inflight.stop(job));
        assert!(tokens[0].is_cancelled() && tokens[1].is_cancelled());
        assert!(!tokens[2].is_cancelled());
        assert!(!inflight.stop(Uuid::now_v7()));
    }
}
