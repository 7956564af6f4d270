//! Every kind kiln knows, with its policy, for code that meets jobs by
//! their kind name (the store, the worker runtime, the admin API). The one
//! place a kind name maps to a policy.

use std::time::Duration;

use crate::{
    AccountPurge, Backoff, DataExport, DeliverWebhook, GenerateImage, Job, NotifyUsers,
    OperatorExport, Probe, RetentionPurge, SendEmail, SendSms, UpscaleImage,
};

/// How the queue runs a kind's attempts: how many, how long each may take,
/// how long to wait between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts before the job ends `failed`, counting the first run.
    pub max_attempts: u32,
    /// How long one attempt may run before it counts as a failed attempt.
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl Policy {
    pub const fn of<J: Job>() -> Policy {
        Policy {
            max_attempts: J::MAX_ATTEMPTS,
            timeout: J::TIMEOUT,
            backoff: J::BACKOFF,
        }
    }
}

/// The backoff for retrying a job of a kind this build does not know (a
/// newer build queued it, e.g. during a rolling deploy) whose worker was
/// lost: the default one. The job goes back to the queue so a worker that
/// knows the kind can run it; a worker that does not know it fails it
/// permanently when it claims it.
pub const UNKNOWN_KIND_BACKOFF: Backoff = Backoff::DEFAULT;

/// A kind's policy as data.
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
    KindSpec::of::<AccountPurge>(),
    KindSpec::of::<DataExport>(),
    KindSpec::of::<DeliverWebhook>(),
    KindSpec::of::<GenerateImage>(),
    KindSpec::of::<NotifyUsers>(),
    KindSpec::of::<OperatorExport>(),
    KindSpec::of::<Probe>(),
    KindSpec::of::<RetentionPurge>(),
    KindSpec::of::<SendEmail>(),
    KindSpec::of::<SendSms>(),
    KindSpec::of::<UpscaleImage>(),
];

impl KindSpec {
    pub const fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_attempts,
            timeout: self.timeout,
            backoff: self.backoff,
        }
    }
}

pub fn spec(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|s| s.kind == kind)
}

/// Every queue some kind runs on, sorted, each once: the queues operators
/// can see and act on.
pub fn queues() -> Vec<&'static str> {
    let mut queues: Vec<&'static str> = KINDS.iter().map(|s| s.queue).collect();
    queues.sort_unstable();
    queues.dedup();
    queues
}

/// Whether some kind runs on `queue`.
pub fn is_queue(queue: &str) -> bool {
    KINDS.iter().any(|s| s.queue == queue)
}

/// The policy of a kind; `None` for a kind this build does not know (the
/// caller decides what that means: see [`UNKNOWN_KIND_BACKOFF`]).
pub fn policy(kind: &str) -> Option<Policy> {
    spec(kind).map(KindSpec::policy)
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
        assert_eq!(policy(Probe::KIND), Some(Policy::of::<Probe>()));
        assert_eq!(policy("no_such_kind"), None);
    }
}
