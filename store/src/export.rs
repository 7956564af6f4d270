//! The reads of a data export (`data_export`): an account's records, page
//! by page in a stable order (oldest first, by id), so an export of any
//! size holds one page at a time. Images page through
//! [`Generations::images_of_owner`](crate::generations::Generations),
//! credits through [`Credits::credit_entries`](crate::credits::Credits),
//! the access log through [`AccessLog::access_log`](crate::access_log::AccessLog),
//! and the account itself is [`Store::profile`](crate::Store::profile).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{OrderId, UserId};
use uuid::Uuid;

use crate::{StoreError, generations::ModerationRecord, orders::Order};

/// A generation as an export shows it: the request, and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedGeneration {
    pub id: Uuid,
    pub job_id: Uuid,
    pub prompt: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub n: u32,
    pub reference_urls: Vec<String>,
    /// Which provider made the images, and how long it took.
    pub provider: Option<String>,
    pub provider_latency_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Export: Send + Sync {
    /// Up to `limit` of the owner's generations with ids after `after`,
    /// by id.
    async fn generations_page(
        &self,
        owner: UserId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ExportedGeneration>, StoreError>;
    /// Up to `limit` moderation decisions about the owner's content with
    /// ids after `after`, by id.
    async fn moderation_page(
        &self,
        owner: UserId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ModerationRecord>, StoreError>;
    /// Up to `limit` of the owner's payment orders with ids after `after`,
    /// by id.
    async fn orders_page(
        &self,
        owner: UserId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
}
