//! Account deletion. At the owner's request, in one transaction: the
//! account is hidden (`deleted_at`), its address freed (the blind indexes
//! become `deleted:<id>`, which no address hashes to, so the address can
//! register again), every session revoked, and its `account_purge` job
//! enqueued. The purge then erases, in bounded batches: images with their
//! objects, generations with their re-hosted reference images, and at last
//! every other row of the account in one transaction, keeping detached
//! what the policy keeps longer (payment orders, access-log entries,
//! moderation decisions).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::StoreError;

/// What a deletion request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDeleted {
    /// The `account_purge` job enqueued with it.
    pub purge_job: Uuid,
    /// The token hashes of the sessions it revoked.
    pub revoked: Vec<String>,
}

/// An image of an account being erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub id: Uuid,
    pub object_key: String,
}

/// A generation of an account being erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredGeneration {
    pub id: Uuid,
    /// Whether reference images were re-hosted under `refs/<id>/`.
    pub has_references: bool,
}

/// The reads and deletes of an erasure (the deletion request itself,
/// which enqueues, is [`JobWrites::delete_account`](crate::JobWrites::delete_account)).
#[async_trait]
pub trait Deletion: Send + Sync + 'static {
    /// The password hash of a live (not deleted) account.
    async fn password_hash(&self, user: UserId) -> Result<Option<String>, StoreError>;
    /// Up to `limit` of an owner's unfinished jobs: (id, kind).
    async fn unfinished_jobs_of(
        &self,
        owner: UserId,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError>;
    /// Up to `limit` images of a deleted account.
    async fn images_to_erase(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredImage>, StoreError>;
    /// Deletes these images' rows (their objects are gone already).
    async fn erase_images(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError>;
    /// Up to `limit` generations of a deleted account whose images are gone.
    async fn generations_to_erase(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredGeneration>, StoreError>;
    /// Deletes these generations' rows (their objects are gone already).
    async fn erase_generations(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError>;
    /// Deletes every other row of a deleted account and the account itself,
    /// in one transaction; detaches its payment orders, access-log entries
    /// and moderation decisions. False when there was no such account.
    async fn erase_account_rows(&self, user: UserId) -> Result<bool, StoreError>;
    /// Accounts deleted before `before` and not erased yet, oldest first.
    async fn deleted_accounts(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError>;
}

/// What a deleted account's blind index becomes: unique, and never the
/// hex of an HMAC, so no address finds the account and the address is free.
pub(crate) fn tombstone(user: UserId) -> String {
    format!("deleted:{}", user.0)
}

/// Who moderation decisions of an erased account belong to: nobody.
pub(crate) const NOBODY: Uuid = Uuid::nil();
