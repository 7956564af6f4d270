//! One handler per job kind, and the list that registers them all.

mod generate_image;
mod probe;
mod prune_jobs;

use std::sync::Arc;

pub use generate_image::GenerateImageHandler;
pub use probe::ProbeHandler;
pub use prune_jobs::PruneJobsHandler;

use crate::{
    Registry, WorkerConfig,
    providers::{
        DevGenerator, DevModerator, ImageGenerator, Moderator,
        config::{ImagesSettings, ModerationSettings},
    },
};
use kiln_store::Objects;

/// What handlers need from outside: providers and object storage.
#[derive(Clone)]
pub struct Deps {
    pub generator: Arc<dyn ImageGenerator>,
    pub moderator: Arc<dyn Moderator>,
    pub objects: Objects,
}

impl Deps {
    /// The providers the settings name, over the given storage.
    pub fn from_settings(
        images: &ImagesSettings,
        moderation: &ModerationSettings,
        objects: Objects,
    ) -> Result<Deps, String> {
        Ok(Deps {
            generator: images.build()?,
            moderator: moderation.build()?,
            objects,
        })
    }

    /// The offline `dev` providers over the given storage.
    pub fn dev(objects: Objects, blocked_words: Vec<String>) -> Deps {
        Deps {
            generator: Arc::new(DevGenerator),
            moderator: Arc::new(DevModerator::new(blocked_words)),
            objects,
        }
    }
}

/// Every kind's handler, as this build runs them.
pub fn registry(config: &WorkerConfig, deps: &Deps) -> Registry {
    Registry::new()
        .register(GenerateImageHandler {
            generator: deps.generator.clone(),
            moderator: deps.moderator.clone(),
            objects: deps.objects.clone(),
        })
        .register(ProbeHandler)
        .register(PruneJobsHandler {
            retention: config.finished_job_retention_ms,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_has_a_handler() {
        let deps = super::Deps::dev(kiln_store::Objects::memory(), Vec::new());
        let registry = super::registry(&crate::WorkerConfig::default(), &deps);
        let mut handled: Vec<_> = registry.kinds().collect();
        handled.sort();
        let mut kinds: Vec<_> = kiln_jobs::KINDS.iter().map(|s| s.kind).collect();
        kinds.sort();
        assert_eq!(handled, kinds);
    }
}
