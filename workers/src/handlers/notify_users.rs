//! `notify_users`: fans a policy or security notice out to its accounts,
//! a batch per transaction (see `kiln_store::notices`). Killed midway and
//! run again, it goes on after the last account it recorded; nobody gets
//! the notice twice.

use async_trait::async_trait;
use kiln_jobs::{JobError, NotifyUsers, NotifyUsersResult};

use crate::{Handler, JobContext, Outcome};

pub struct NotifyUsersHandler {
    /// Accounts per transaction.
    pub batch: u32,
}

#[async_trait]
impl Handler<NotifyUsers> for NotifyUsersHandler {
    async fn run(
        &self,
        job: NotifyUsers,
        ctx: &JobContext,
    ) -> Result<Outcome<NotifyUsersResult>, JobError> {
        let store = ctx.store();
        let mut queued = 0;
        loop {
            if ctx.is_cancelled() {
                return Err(JobError::permanent(
                    "cancelled",
                    "the fan-out was cancelled; accounts not reached yet get nothing",
                ));
            }
            let batch = store
                .fan_out(&job.broadcast, self.batch)
                .await?
                .ok_or_else(|| {
                    JobError::permanent("notice_missing", "the security notice is gone")
                })?;
            queued += batch.queued();
            if batch.done {
                break;
            }
        }
        Ok(Outcome::Done(NotifyUsersResult {
            queued,
            recipients: store.recipients(&job.broadcast).await?,
        }))
    }
}
