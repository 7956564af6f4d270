use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Job, UserId};

/// Erases a deleted account: its prompts, images (and their objects),
/// jobs, sessions, codes, credits and personal fields; detaches what the
/// policy keeps longer (payment records, access-log entries, moderation
/// decisions) from the person. Enqueued when the owner deletes the account;
/// the retention purge erases any deleted account left past
/// `retention.deleted_account_days` the same way. A system job: the
/// account it erases does not own it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountPurge {
    pub user: UserId,
}

impl Job for AccountPurge {
    type Result = AccountPurgeResult;
    const KIND: &'static str = "account_purge";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: u32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(3600);
}

/// What an account purge erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPurgeResult {
    /// Images, each with its object.
    pub images: u64,
    /// Generations (prompts), with their re-hosted reference images.
    pub generations: u64,
    /// Waiting jobs cancelled (and refunded) before the erasure.
    pub jobs_cancelled: u64,
}
