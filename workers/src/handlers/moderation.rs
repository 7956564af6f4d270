//! Keeping every moderation decision, allowed or not (P7), for its
//! retention (P13): one place for every handler that moderates.

use chrono::Utc;
use kiln_jobs::JobError;
use kiln_store::{
    Store,
    generations::{ModerationRecord, ModerationSubject},
};
use uuid::Uuid;

use crate::providers::Decision;

pub(crate) async fn record(
    store: &Store,
    owner: Uuid,
    generation_id: Uuid,
    subject: ModerationSubject,
    moderator: &str,
    decision: &Decision,
) -> Result<(), JobError> {
    store
        .record_moderation(&ModerationRecord {
            id: Uuid::now_v7(),
            owner,
            generation_id: Some(generation_id),
            subject,
            provider: moderator.to_owned(),
            allowed: decision.allowed,
            categories: decision.categories.clone(),
            scores: decision.scores.clone(),
            created_at: Utc::now(),
        })
        .await
        .map_err(|e| JobError::transient("store_unavailable", e.to_string()))
}
