use std::time::Duration;

use kiln_jobs::JobError;
use kiln_store::{Lease, Store};
use tokio_util::sync::CancellationToken;

/// What a handler knows about the attempt it runs, and how it reports back.
pub struct JobContext {
    pub(crate) store: Store,
    pub(crate) lease: Lease,
    /// The process running this attempt (also its `lease_owner`).
    pub worker_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub owner: Option<kiln_jobs::UserId>,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    pub fn job_id(&self) -> uuid::Uuid {
        self.lease.id
    }

    /// Records the stage and progress (0-100) clients see while polling.
    /// Fails when this worker no longer holds the job (it was cancelled or
    /// rescued), so the handler can stop.
    pub async fn progress(&self, stage: &str, progress: u8) -> Result<(), JobError> {
        match self
            .store
            .set_progress(self.lease, Some(stage), progress)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(JobError::permanent(
                "lease_lost",
                "this worker no longer holds the job",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves when the job's cancellation was asked for (or its lease was
    /// lost). Long handlers can select on it to stop cleanly; the runtime
    /// drops the handler's future at that point anyway.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Fires when the job is cancelled or its claim is lost: for provider
    /// calls that must tell the provider to stop too.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The store, for handlers whose work is the database itself.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// A handler's successful answer. A handler answers with its kind's typed
/// result ([`kiln_jobs::Job::Result`]); the runtime stores it as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<R = serde_json::Value> {
    /// Finished; the value is the job's `result`.
    Done(R),
    /// Finished, and these jobs follow it: enqueued in the transaction that
    /// records the success, each as a child of this job working for its
    /// owner (none when the success is not recorded: a stale lease).
    DoneThen(R, Vec<kiln_store::NewJob>),
    /// Not now: run again after this long, without spending an attempt.
    Snooze(Duration),
}
