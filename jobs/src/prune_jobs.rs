use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Job;

/// Deletes finished jobs older than the configured retention, in batches, so
/// job history stays bounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneJobs {}

impl Job for PruneJobs {
    type Result = PruneJobsResult;
    const KIND: &'static str = "prune_jobs";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(600);
}

/// How many finished jobs a prune deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneJobsResult {
    pub deleted: u64,
}
