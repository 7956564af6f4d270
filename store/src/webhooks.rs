//! Clients' webhooks: the registration written with a job, and the record
//! of every delivery attempt (`GET /v1/jobs/{id}/deliveries`). The events
//! themselves are `deliver_webhook` jobs the database queues
//! (migration `0028_webhooks.sql`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{UserId, WebhookEvents};
use serde::Serialize;
use uuid::Uuid;

use crate::StoreError;

/// A job's webhook registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub job_id: Uuid,
    /// Whose secret signs the deliveries.
    pub owner: UserId,
    pub url: String,
    pub events: WebhookEvents,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It did not; another attempt follows.
    Retrying,
    /// It did not, and no attempt follows (a refusal that will not change,
    /// or the last attempt).
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<DeliveryOutcome, StoreError> {
        match text {
            "delivered" => Ok(DeliveryOutcome::Delivered),
            "retrying" => Ok(DeliveryOutcome::Retrying),
            "failed" => Ok(DeliveryOutcome::Failed),
            other => Err(StoreError::Corrupt(format!(
                "webhook_deliveries.outcome {other:?}"
            ))),
        }
    }
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The job the event is about.
    pub job_id: Uuid,
    pub event_id: Uuid,
    /// `job.completed` or `job.changed`.
    pub event: String,
    pub attempt: u32,
    /// The receiver's status; `None` when no answer came.
    pub status_code: Option<u16>,
    pub outcome: DeliveryOutcome,
    /// Why it did not succeed, as a code (`status_503`, `connection_failed`).
    pub error: Option<String>,
    pub duration_ms: u32,
    pub at: DateTime<Utc>,
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    /// The registration of `job_id`, if it has one.
    async fn webhook(&self, job_id: Uuid) -> Result<Option<Webhook>, StoreError>;

    async fn record_delivery(&self, delivery: &Delivery) -> Result<(), StoreError>;

    /// The attempts to deliver `job_id`'s events, oldest first, at most
    /// `limit`.
    async fn deliveries(&self, job_id: Uuid, limit: u32) -> Result<Vec<Delivery>, StoreError>;
}

pub(crate) fn events(text: &str) -> Result<WebhookEvents, StoreError> {
    match text {
        "completed" => Ok(WebhookEvents::Completed),
        "all" => Ok(WebhookEvents::All),
        other => Err(StoreError::Corrupt(format!("webhooks.events {other:?}"))),
    }
}

/// A `webhooks` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct WebhookRow {
    job_id: crate::codec::Id,
    owner: String,
    url: String,
    events: String,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(r: WebhookRow) -> Result<Webhook, StoreError> {
        Ok(Webhook {
            job_id: r.job_id.0,
            owner: r.owner.parse().map_err(|_| {
                StoreError::Corrupt(format!("webhook owner {:?} is not a user id", r.owner))
            })?,
            url: r.url,
            events: events(&r.events)?,
        })
    }
}

/// A `webhook_deliveries` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    job_id: crate::codec::Id,
    event_id: crate::codec::Id,
    event: String,
    attempt: i32,
    status_code: Option<i32>,
    outcome: String,
    error: Option<String>,
    duration_ms: i32,
    created_at: crate::codec::Time,
}

pub(crate) const DELIVERY_COLUMNS: &str =
    "job_id, event_id, event, attempt, status_code, outcome, error, duration_ms, created_at";

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(r: DeliveryRow) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            job_id: r.job_id.0,
            event_id: r.event_id.0,
            event: r.event,
            attempt: u32::try_from(r.attempt).unwrap_or(0),
            status_code: r.status_code.and_then(|s| u16::try_from(s).ok()),
            outcome: DeliveryOutcome::parse(&r.outcome)?,
            error: r.error,
            duration_ms: u32::try_from(r.duration_ms).unwrap_or(0),
            at: r.created_at.0,
        })
    }
}
