use std::time::Duration;

use crate::{Backoff, GenerateImage, Job, Probe, PruneJobs, SendEmail, SendSms, UpscaleImage};

/// A kind's policy as data, for code that meets jobs by their kind name
/// (the store, the worker runtime, the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    pub kind: &'static str,
    pub queue: &'static str,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub priority: i16,
    pub backoff: Backoff,
    pub schema_version: i32,
}

impl KindSpec {
    pub const fn of<J: Job>() -> KindSpec {
        KindSpec {
            kind: J::KIND,
            queue: J::QUEUE,
            max_attempts: J::MAX_ATTEMPTS,
            timeout: J::TIMEOUT,
            priority: J::PRIORITY,
            backoff: J::BACKOFF,
            schema_version: J::SCHEMA_VERSION,
        }
    }
}

/// Every kind kiln knows, in one list.
pub const KINDS: &[KindSpec] = &[
    KindSpec::of::<GenerateImage>(),
    KindSpec::of::<Probe>(),
    KindSpec::of::<PruneJobs>(),
    KindSpec::of::<SendEmail>(),
    KindSpec::of::<SendSms>(),
    KindSpec::of::<UpscaleImage>(),
];

pub fn spec(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|s| s.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_sane() {
        let mut names: Vec<_> = KINDS.iter().map(|s| s.kind).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "duplicate kind name");
        for s in KINDS {
            assert!(s.max_attempts >= 1, "{} never runs", s.kind);
            assert!(!s.timeout.is_zero(), "{} has no time to run", s.kind);
            assert!(!s.queue.is_empty());
        }
    }

    #[test]
    fn lookup_by_name() {
        assert_eq!(spec(Probe::KIND).map(|s| s.queue), Some("default"));
        assert!(spec("no_such_kind").is_none());
    }
}
