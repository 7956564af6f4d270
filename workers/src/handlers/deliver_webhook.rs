//! Delivers one webhook event: the body is built now (a completion carries
//! the job's final resource with fresh links; a change carries the state
//! and stage it had then), signed with Standard Webhooks headers under the
//! owner's secret, and POSTed through the guarded sender. Every attempt is
//! recorded for `GET /v1/jobs/{id}/deliveries`; the event id is the same
//! on every attempt, so receivers deduplicate on `webhook-id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{DeliverWebhook, JobError, WebhookDelivered, WebhookEvent};
use kiln_providers::{
    fetch::PostFailure,
    payments::signature::{sign_standard, standard_secret},
    webhook::WebhookSender,
};
use kiln_store::{
    JobRecord, Store,
    resources::Presenter,
    webhooks::{Delivery, DeliveryOutcome},
};
use serde::Serialize;
use uuid::Uuid;

use super::ObjectLinks;
use crate::{Handler, JobContext, Outcome};

pub struct DeliverWebhookHandler {
    pub sender: Arc<WebhookSender>,
    /// Links in the body are absolute when `storage.public_base_url` is set.
    pub links: ObjectLinks,
    /// How long an export's link works.
    pub export_link_ttl: Duration,
    /// `retention.export_days`.
    pub export_days: u32,
}

#[async_trait]
impl Handler<DeliverWebhook> for DeliverWebhookHandler {
    async fn run(
        &self,
        event: DeliverWebhook,
        ctx: &JobContext,
    ) -> Result<Outcome<WebhookDelivered>, JobError> {
        let store = ctx.store();
        let Some(hook) = store.webhook(event.job_id).await? else {
            // The job went (retention, or its account was erased) and its
            // registration with it.
            return Err(JobError::permanent(
                "webhook_removed",
                "the job and its webhook no longer exist",
            ));
        };
        let Some(job) = store.get(event.job_id).await? else {
            return Err(JobError::permanent(
                "webhook_removed",
                "the job no longer exists",
            ));
        };
        let Some(secret) = store.webhook_secret(hook.owner).await? else {
            return Err(JobError::permanent(
                "no_signing_secret",
                "the account has no webhook signing secret",
            ));
        };
        let secret =
            standard_secret(&secret).map_err(|e| JobError::permanent("no_signing_secret", e))?;
        let body = self.body(store, &event, job).await?;

        let sent_at = Utc::now();
        let headers = sign_standard(
            &secret,
            &event.event_id.to_string(),
            sent_at.timestamp(),
            &body,
        );
        let started = Instant::now();
        let answer = self.sender.send(&hook.url, &headers, body).await;
        let took = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let last = ctx.attempt >= ctx.max_attempts;
        let (status_code, outcome, error) = match &answer {
            Ok(status) => (Some(*status), DeliveryOutcome::Delivered, None),
            Err(PostFailure { status, error }) => {
                let outcome = if error.is_permanent() || last {
                    DeliveryOutcome::Failed
                } else {
                    DeliveryOutcome::Retrying
                };
                (*status, outcome, Some(error.code().to_owned()))
            }
        };
        store
            .record_delivery(&Delivery {
                job_id: event.job_id,
                event_id: event.event_id,
                event: event.event.as_str().to_owned(),
                attempt: ctx.attempt,
                status_code,
                outcome,
                error,
                duration_ms: took,
                at: sent_at,
            })
            .await?;
        match answer {
            Ok(status_code) => Ok(Outcome::Done(WebhookDelivered { status_code })),
            // A receiver's `Retry-After: 0` makes no retry loop: the runtime
            // waits at least the kind's backoff.
            Err(PostFailure { error, .. }) => Err(error.into()),
        }
    }
}

impl DeliverWebhookHandler {
    /// The event as JSON: `{"type", "timestamp", "data"}` (the Standard
    /// Webhooks payload shape). `data` holds the job and nothing about its
    /// owner: no account id, email or phone.
    async fn body(
        &self,
        store: &Store,
        event: &DeliverWebhook,
        job: JobRecord,
    ) -> Result<Vec<u8>, JobError> {
        let timestamp =
            DateTime::<Utc>::from_timestamp_millis(event.occurred_at_ms).unwrap_or_else(Utc::now);
        let data = match event.event {
            WebhookEvent::Completed => {
                let presenter = Presenter {
                    store: store.clone(),
                    signer: self.links.signer.clone(),
                    base_url: self.links.public_base_url.clone(),
                    image_url_ttl: self.links.ttl,
                    export_link_ttl: self.export_link_ttl,
                    export_days: self.export_days,
                };
                serde_json::to_value(presenter.job_resource(job).await?)
            }
            WebhookEvent::Changed => serde_json::to_value(Changed {
                id: job.id,
                kind: &job.kind,
                state: &event.state,
                stage: event.stage.as_deref(),
                progress: event.progress,
            }),
        }
        .map_err(|e| JobError::permanent("unencodable", e.to_string()))?;
        let body = serde_json::json!({
            "type": event.event.as_str(),
            "timestamp": timestamp,
            "data": data,
        });
        serde_json::to_vec(&body).map_err(|e| JobError::permanent("unencodable", e.to_string()))
    }
}

/// What a `job.changed` event says: the job as it was at that change.
#[derive(Serialize)]
struct Changed<'a> {
    id: Uuid,
    kind: &'a str,
    state: &'a str,
    stage: Option<&'a str>,
    progress: i16,
}
