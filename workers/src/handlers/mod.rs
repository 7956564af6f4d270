//! One handler per job kind, and the list that registers them all.

mod probe;
mod prune_jobs;

pub use probe::ProbeHandler;
pub use prune_jobs::PruneJobsHandler;

use crate::{Registry, WorkerConfig};

/// Every kind's handler, as this build runs them.
pub fn registry(config: &WorkerConfig) -> Registry {
    Registry::new()
        .register(ProbeHandler)
        .register(PruneJobsHandler {
            retention: config.finished_job_retention_ms,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_has_a_handler() {
        let registry = super::registry(&crate::WorkerConfig::default());
        let mut handled: Vec<_> = registry.kinds().collect();
        handled.sort();
        let mut kinds: Vec<_> = kiln_jobs::KINDS.iter().map(|s| s.kind).collect();
        kinds.sort();
        assert_eq!(handled, kinds);
    }
}
