use std::time::Duration;

use async_trait::async_trait;
use kiln_jobs::{JobError, Probe, ProbeFailure, ProbeResult};

use crate::{Handler, JobContext, Outcome};

pub struct ProbeHandler;

#[async_trait]
impl Handler<Probe> for ProbeHandler {
    async fn run(&self, job: Probe, ctx: &JobContext) -> Result<Outcome<ProbeResult>, JobError> {
        if job.sleep_ms > 0 {
            ctx.progress("sleeping", 0).await?;
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        }
        if job.panic {
            panic!("probe asked to panic");
        }
        match job.fail {
            Some(ProbeFailure::Transient) => Err(JobError::transient(
                "probe_failure",
                "probe asked to fail (transient)",
            )),
            Some(ProbeFailure::Permanent) => Err(JobError::permanent(
                "probe_failure",
                "probe asked to fail (permanent)",
            )),
            None => Ok(Outcome::Done(ProbeResult {
                attempt: ctx.attempt,
                job_id: ctx.job_id(),
                worker: ctx.worker_id.clone(),
            })),
        }
    }
}
