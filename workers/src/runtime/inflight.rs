use std::{collections::HashMap, sync::Mutex};

use kiln_store::Lease;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The jobs this process holds now (claimed, waiting for a running slot or
/// running), each with the token that stops its handler. The heartbeat
/// extends their leases; cancellations find their handler here.
#[derive(Default)]
pub(crate) struct InFlight {
    jobs: Mutex<HashMap<Uuid, (Lease, CancellationToken)>>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Lease, CancellationToken)>> {
        // A poisoned map is still a valid map: entries are inserted and
        // removed whole.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `lease` from its claim on; the token that stops its handler
    /// (the one given at the claim, if the job waited for a slot, so a
    /// cancellation that came while it waited is not lost).
    pub fn start(&self, lease: Lease) -> CancellationToken {
        self.lock()
            .entry(lease.id)
            .or_insert_with(|| (lease, CancellationToken::new()))
            .1
            .clone()
    }

    pub fn finish(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.lock().values().map(|(l, _)| *l).collect()
    }

    /// Stops the handler running job `id`, if it runs here.
    pub fn stop(&self, id: Uuid) -> bool {
        match self.lock().get(&id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
