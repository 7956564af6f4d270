//! The moderation gate every handler passes content through: ask the
//! moderator, keep the decision whether it allows or blocks (for the 180
//! days decisions are kept), and end the job `content_blocked` when it blocks.

use chrono::Utc;
use kiln_jobs::{JobError, stage};
use kiln_store::generations::{ModerationRecord, ModerationSubject};
use uuid::Uuid;

use crate::JobContext;
use kiln_providers::moderation::Moderator;

/// What is being judged.
pub(crate) enum Content<'a> {
    Text(&'a str),
    Image(&'a [u8]),
}

/// Whose content, for the stored decision.
pub(crate) struct Subject {
    pub owner: kiln_jobs::UserId,
    pub generation_id: Uuid,
}

/// Ok when allowed. Blocked: the job's stage becomes `blocked` and the
/// error is a permanent `content_blocked` naming `what` (e.g. "prompt").
pub(crate) async fn gate(
    ctx: &JobContext,
    moderator: &dyn Moderator,
    subject: &Subject,
    content: Content<'_>,
    what: &str,
) -> Result<(), JobError> {
    let (decision, kind) = match content {
        Content::Text(text) => (moderator.check_text(text).await?, ModerationSubject::Prompt),
        Content::Image(bytes) => (
            moderator.check_image(bytes).await?,
            ModerationSubject::Image,
        ),
    };
    ctx.store()
        .record_moderation(&ModerationRecord {
            id: Uuid::now_v7(),
            owner: subject.owner,
            generation_id: Some(subject.generation_id),
            subject: kind,
            provider: moderator.name().to_owned(),
            allowed: decision.allowed,
            categories: decision.categories,
            scores: decision.scores,
            created_at: Utc::now(),
        })
        .await?;
    if decision.allowed {
        return Ok(());
    }
    ctx.progress(stage::BLOCKED, 100).await?;
    Err(JobError::permanent(
        "content_blocked",
        format!("the {what} was blocked by content moderation"),
    ))
}
