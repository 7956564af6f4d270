use std::time::Duration;

use async_trait::async_trait;
use kiln_jobs::{AccountPurge, AccountPurgeResult, JobError, UserId};
use kiln_store::{Objects, Store};

use crate::{Handler, JobContext, Outcome};

pub struct AccountPurgeHandler {
    pub objects: Objects,
}

/// Rows per batch: each batch deletes its objects, then its rows, so a
/// purge killed halfway leaves no row pointing at a deleted object and
/// the next attempt goes on where it stopped.
const BATCH: u32 = 500;

/// How long a purge waits for the account's running jobs to stop.
const WAIT_FOR_RUNNING: Duration = Duration::from_secs(5);

#[async_trait]
impl Handler<AccountPurge> for AccountPurgeHandler {
    async fn run(
        &self,
        job: AccountPurge,
        ctx: &JobContext,
    ) -> Result<Outcome<AccountPurgeResult>, JobError> {
        match erase_account(ctx.store(), &self.objects, job.user).await? {
            Erasure::Done(result) => Ok(Outcome::Done(result)),
            Erasure::JobsStillRunning => Ok(Outcome::Snooze(WAIT_FOR_RUNNING)),
        }
    }
}

/// What became of an erasure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Erasure {
    Done(AccountPurgeResult),
    /// Some of the account's jobs are still running (told to stop):
    /// nothing was erased, try again shortly.
    JobsStillRunning,
}

/// Erases a deleted account (see `kiln_store::deletion`): cancels its
/// jobs, then deletes its images and generations with their objects in
/// batches, then every other row. An account that is not deleted, or was
/// erased already, is left alone.
pub(crate) async fn erase_account(
    store: &Store,
    objects: &Objects,
    user: UserId,
) -> Result<Erasure, JobError> {
    let (jobs_cancelled, running) = store.cancel_jobs_of(user, &[]).await?;
    if running > 0 {
        return Ok(Erasure::JobsStillRunning);
    }
    let mut result = AccountPurgeResult {
        jobs_cancelled,
        ..AccountPurgeResult::default()
    };
    loop {
        let images = store.images_to_erase(user, BATCH).await?;
        if images.is_empty() {
            break;
        }
        for image in &images {
            objects.delete(&image.object_key).await?;
        }
        let ids: Vec<_> = images.iter().map(|i| i.id).collect();
        result.images += store.erase_images(user, &ids).await?;
    }
    loop {
        let generations = store.generations_to_erase(user, BATCH).await?;
        if generations.is_empty() {
            break;
        }
        for generation in generations.iter().filter(|g| g.has_references) {
            objects
                .delete_prefix(&format!("refs/{}/", generation.id))
                .await?;
        }
        let ids: Vec<_> = generations.iter().map(|g| g.id).collect();
        result.generations += store.erase_generations(user, &ids).await?;
    }
    // Its data exports, before the rows that say the account existed.
    objects
        .delete_prefix(&kiln_jobs::DataExport::folder(user))
        .await?;
    store.erase_account_rows(user).await?;
    Ok(Erasure::Done(result))
}
