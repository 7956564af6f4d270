use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Backoff, Job};

/// Tells a client's webhook URL that one of its jobs changed. Queued by the
/// database itself, in the transaction that makes the change (migration
/// `0028_webhooks.sql`), never by application code: the queue, priority
/// and attempts below are written there too, and a store test holds the
/// two equal.
///
/// The payload is the event as it happened (the state and stage at that
/// moment); the body is built when it is sent, from the job as it then
/// stands for a completion (its final resource, with fresh links).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverWebhook {
    /// The job the event is about.
    pub job_id: Uuid,
    /// The same on every attempt (`webhook-id`); also this delivery job's
    /// own id.
    pub event_id: Uuid,
    pub event: WebhookEvent,
    pub state: String,
    pub stage: Option<String>,
    pub progress: i16,
    /// When the change was committed, unix milliseconds.
    pub occurred_at_ms: i64,
}

/// What happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// It ended: succeeded, failed or cancelled. Every registration hears it.
    #[serde(rename = "job.completed")]
    Completed,
    /// Its state or stage changed (registrations with `webhook_events: all`).
    #[serde(rename = "job.changed")]
    Changed,
}

impl WebhookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "job.completed",
            WebhookEvent::Changed => "job.changed",
        }
    }
}

/// Which events a registration hears (`webhook_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvents {
    /// The terminal event only.
    #[default]
    Completed,
    /// Every change of state or stage, and the terminal event.
    All,
}

impl WebhookEvents {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvents::Completed => "completed",
            WebhookEvents::All => "all",
        }
    }
}

impl Job for DeliverWebhook {
    type Result = WebhookDelivered;
    const KIND: &'static str = "deliver_webhook";
    const QUEUE: &'static str = "webhooks";
    /// With the backoff below, attempts span about a day (10 s doubling
    /// to 2 h between them) before the delivery is given up.
    const MAX_ATTEMPTS: u32 = 24;
    const TIMEOUT: Duration = Duration::from_secs(60);
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(2 * 60 * 60),
    };
}

/// A delivery the receiver accepted (a 2xx answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivered {
    pub status_code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backoff is "up to a day": the full delays of every retry add up
    /// to about 24 hours (half of each is jitter, so 0.5x to 1x of it).
    #[test]
    fn retries_span_about_a_day() {
        let full: u64 = (1..DeliverWebhook::MAX_ATTEMPTS)
            .map(|attempt| {
                let b = DeliverWebhook::BACKOFF;
                let exponent = (attempt - 1).min(30);
                b.base.saturating_mul(1 << exponent).min(b.max).as_secs()
            })
            .sum();
        let hours = full as f64 / 3600.0;
        assert!((24.0..=36.0).contains(&hours), "{hours} h");
    }

    #[test]
    fn payload_reads_what_the_database_writes() {
        let raw = serde_json::json!({
            "job_id": "0193a5a0-0000-7000-8000-000000000001",
            "event_id": "5d1f6a7e-2b1c-4c1e-9a7b-0c3d2e1f0a9b",
            "event": "job.completed",
            "state": "succeeded",
            "stage": null,
            "progress": 100,
            "occurred_at_ms": 1_780_000_000_000_i64,
        });
        let job: DeliverWebhook = serde_json::from_value(raw).unwrap();
        assert_eq!(job.event, WebhookEvent::Completed);
        assert_eq!(job.stage, None);
    }
}
