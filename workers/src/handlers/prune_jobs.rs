use std::time::Duration;

use async_trait::async_trait;
use kiln_jobs::{JobError, PruneJobs, PruneJobsResult};

use crate::{Handler, JobContext, Outcome};

pub struct PruneJobsHandler {
    pub retention: Duration,
}

const BATCH: u32 = 1000;

#[async_trait]
impl Handler<PruneJobs> for PruneJobsHandler {
    async fn run(
        &self,
        _job: PruneJobs,
        ctx: &JobContext,
    ) -> Result<Outcome<PruneJobsResult>, JobError> {
        let mut deleted = 0u64;
        // Small batches keep each delete's locks short.
        loop {
            if ctx.is_cancelled() {
                break;
            }
            let n = ctx.store().prune_finished(self.retention, BATCH).await?;
            deleted += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        Ok(Outcome::Done(PruneJobsResult { deleted }))
    }
}
