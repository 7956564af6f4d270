use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::{JobRecord, JobState, StoreError};

/// What one generation asks for, alone or as an item of a batch.
#[derive(Debug, Clone)]
pub struct GenerationInput {
    pub prompt: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub n: u32,
    /// Images to start from, as the client gave them (fetched by a worker).
    pub reference_urls: Vec<String>,
    /// SHA-256 of the canonical request, to tell an idempotent retry from a
    /// different request under the same key.
    pub request_hash: String,
    /// What it costs: reserved from the owner's balance with its job.
    pub credits: u32,
    /// Where the owner hears of the job's changes.
    pub webhook: Option<crate::WebhookTarget>,
    /// What its success enqueues; reserved up front with it.
    pub then: Option<kiln_jobs::FollowUps>,
    /// The trace of the request that asked for it (its job is built in
    /// the group commit's task, outside the request's span).
    pub traceparent: Option<String>,
}

impl GenerationInput {
    /// The generation's `generate_image` job for `owner`: its own price and
    /// its follow-ups' reserved, its webhook kept.
    pub(crate) fn job(
        &self,
        generation_id: Uuid,
        owner: UserId,
    ) -> Result<crate::NewJob, StoreError> {
        let job = kiln_jobs::GenerateImage {
            generation_id,
            then: self.then,
        };
        let mut job = crate::NewJob::of(&job)?
            .owner(owner)
            .reserving(self.credits)
            .reserving_for_follow_ups(self.then.map_or(0, |t| t.credits(self.n)))
            .webhook(self.webhook.clone());
        job.traceparent.clone_from(&self.traceparent);
        Ok(job)
    }
}

/// A generation request, stored with its `generate_image` job in one
/// transaction.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub owner: UserId,
    pub input: GenerationInput,
    pub idempotency_key: Option<String>,
}

/// Generations asked for in one request: stored with all their jobs in one
/// transaction, under one idempotency key for the whole batch.
#[derive(Debug, Clone)]
pub struct NewGenerationBatch {
    pub owner: UserId,
    /// In the request's order; the jobs come back in this order.
    pub items: Vec<GenerationInput>,
    /// SHA-256 of the canonical batch.
    pub request_hash: String,
    pub idempotency_key: Option<String>,
}

/// A generation row the engines insert: its id, its job's, and what was
/// asked.
pub(crate) struct NewGenerationRow<'a> {
    pub id: Uuid,
    pub job_id: Uuid,
    pub input: &'a GenerationInput,
}

impl NewGenerationBatch {
    /// The batch's `generate_image` jobs, one per item in order, and the
    /// ids their generations get. None carries a key of its own, so every
    /// one goes in.
    pub(crate) fn jobs(&self) -> Result<(Vec<Uuid>, Vec<crate::NewJob>), StoreError> {
        let ids: Vec<Uuid> = self.items.iter().map(|_| Uuid::now_v7()).collect();
        let jobs = ids
            .iter()
            .zip(&self.items)
            .map(|(&generation_id, item)| item.job(generation_id, self.owner))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((ids, jobs))
    }

    /// The generation rows of the batch, once its jobs are in.
    pub(crate) fn rows<'a>(&'a self, ids: &[Uuid], job_ids: &[Uuid]) -> Vec<NewGenerationRow<'a>> {
        ids.iter()
            .zip(job_ids)
            .zip(&self.items)
            .map(|((&id, &job_id), input)| NewGenerationRow { id, job_id, input })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEnqueued {
    /// A new job, as stored (so the caller need not read it back).
    Created { job: Box<crate::JobRecord> },
    /// The same idempotency key and the same request: the first job.
    Existing { job_id: Uuid },
    /// The same idempotency key with a different request.
    KeyReused,
}

impl GenerationEnqueued {
    /// The answer to a request whose idempotency key found `job_id`: the
    /// same job when the stored request hash is this request's.
    pub(crate) fn retried(job_id: Uuid, stored_hash: Option<&str>, hash: &str) -> Self {
        if stored_hash == Some(hash) {
            GenerationEnqueued::Existing { job_id }
        } else {
            GenerationEnqueued::KeyReused
        }
    }
}

/// The outcome of a batch, as [`GenerationEnqueued`] is of one generation;
/// job ids in the order of the batch's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEnqueued {
    Created {
        job_ids: Vec<Uuid>,
    },
    /// The same idempotency key and the same batch: the first batch's jobs.
    Existing {
        job_ids: Vec<Uuid>,
    },
    /// The same idempotency key with a different batch.
    KeyReused,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub id: Uuid,
    pub job_id: Uuid,
    pub owner: UserId,
    pub prompt: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub n: u32,
    pub reference_urls: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: Uuid,
    pub generation_id: Uuid,
    pub owner: UserId,
    pub object_key: String,
    pub width: u32,
    pub height: u32,
    pub content_type: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
    /// The image this one was upscaled from; `None` for a generated one.
    pub source_image_id: Option<Uuid>,
}

/// One moderation decision about a prompt or a generated image, stored
/// whether it allowed or blocked, and purged after the 180 days the policy
/// keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModerationRecord {
    pub id: Uuid,
    pub owner: UserId,
    pub generation_id: Option<Uuid>,
    pub subject: ModerationSubject,
    /// The moderator that decided (`dev`, `openai`).
    pub provider: String,
    pub allowed: bool,
    /// The categories that blocked (empty when allowed).
    pub categories: Vec<String>,
    /// Every score the moderator gave, so thresholds can be tuned later.
    pub scores: BTreeMap<String, f64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModerationSubject {
    Prompt,
    Image,
}

impl ModerationSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            ModerationSubject::Prompt => "prompt",
            ModerationSubject::Image => "image",
        }
    }

    pub fn parse(s: &str) -> Option<ModerationSubject> {
        match s {
            "prompt" => Some(ModerationSubject::Prompt),
            "image" => Some(ModerationSubject::Image),
            _ => None,
        }
    }
}

/// Filters for an owner's job list, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// Only jobs older than this one (the cursor).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// Generations, their images, and the jobs clients see.
#[async_trait]
pub trait Generations: Send + Sync {
    async fn generation(&self, id: Uuid) -> Result<Option<Generation>, StoreError>;
    async fn generation_for_job(&self, job_id: Uuid) -> Result<Option<Generation>, StoreError>;
    /// Records which provider made it and how long the provider took.
    async fn finish_generation(
        &self,
        id: Uuid,
        provider: &str,
        provider_latency_ms: u64,
    ) -> Result<(), StoreError>;
    async fn add_image(&self, image: &ImageRecord) -> Result<(), StoreError>;
    async fn images_of_generation(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<ImageRecord>, StoreError>;
    /// Removes the generated image rows of a generation, so a retried
    /// attempt starts clean. (Upscales are made only from a finished
    /// generation, so none refers to these yet.)
    async fn delete_images_of_generation(&self, generation_id: Uuid) -> Result<(), StoreError>;
    /// An owner's images, newest first, older than `before` when given.
    async fn images_of_owner(
        &self,
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ImageRecord>, StoreError>;
    /// Marks an owner's image deleted (it disappears from every read) and
    /// returns it, so its object can be removed; `None` when there is no
    /// such image of theirs.
    async fn delete_image(
        &self,
        id: Uuid,
        owner: UserId,
    ) -> Result<Option<ImageRecord>, StoreError>;
    /// An owner's image; `None` when it does not exist or is someone else's.
    async fn image(&self, id: Uuid, owner: UserId) -> Result<Option<ImageRecord>, StoreError>;
    async fn record_moderation(&self, decision: &ModerationRecord) -> Result<(), StoreError>;
    /// Decisions about one generation, oldest first.
    async fn moderation_of_generation(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<ModerationRecord>, StoreError>;
    /// An owner's jobs, newest first.
    async fn jobs_of_owner(
        &self,
        owner: UserId,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// [`Generations::images_of_generation`] for several generations in one
    /// read (a page of jobs): their generated images, by generation, then
    /// oldest first.
    async fn images_of_generations(
        &self,
        generation_ids: &[Uuid],
    ) -> Result<Vec<ImageRecord>, StoreError>;
    /// [`Generations::image`] for several ids in one read: those of the
    /// owner's images among `ids` that exist, by id.
    async fn images_by_ids(
        &self,
        ids: &[Uuid],
        owner: UserId,
    ) -> Result<Vec<ImageRecord>, StoreError>;
}
