//! The retention purge's deletes: one data class at a time, a bounded
//! batch per call (each its own short transaction), oldest first. What the
//! classes are and how long each is kept is `kiln_jobs::RetentionSettings`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::DataClass;
use uuid::Uuid;

use crate::StoreError;

#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Deletes up to `limit` rows of each table of `class` that are older
    /// than `before`; returns how many went. Call until it returns less
    /// than `limit`. Finished jobs go as [`Queue::prune_finished`](crate::Queue::prune_finished)
    /// removes them; deleted accounts are not rows of a table but erased
    /// through [`Deletion`](crate::deletion::Deletion) (nothing here).
    async fn purge(
        &self,
        class: DataClass,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Which of these ids are images kiln still has (their objects are
    /// `images/<id>.png`); the orphan sweep deletes the objects of the rest.
    async fn images_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;

    /// Which of these ids are generations kiln still has (their reference
    /// images are under `refs/<id>/`).
    async fn generations_that_exist(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;
}
