use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Job;

/// A diagnostic job: sleeps, then succeeds, fails or panics as told. Used by
/// operators to check that workers run, by the benchmark (a no-op probe), and
/// by the tests that kill workers mid-job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail: Option<ProbeFailure>,
    #[serde(default)]
    pub panic: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeFailure {
    Transient,
    Permanent,
}

impl Job for Probe {
    type Result = ProbeResult;
    const KIND: &'static str = "probe";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(120);
    const BACKOFF: crate::Backoff = crate::Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
}

/// A probe that succeeded: which attempt, of which job, on which worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub attempt: u32,
    pub job_id: Uuid,
    pub worker: String,
}
