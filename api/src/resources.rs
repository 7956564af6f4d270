//! What clients see of jobs and images.

use chrono::{DateTime, Utc};
use kiln_jobs::{GenerateImage, GenerateImageResult, Job, UpscaleImage, UpscaleImageResult};
use kiln_store::{JobRecord, JobState, generations::ImageRecord};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct JobResource {
    pub id: Uuid,
    /// e.g. `generate_image`.
    pub kind: String,
    /// scheduled, available, running, retryable, succeeded, failed, cancelled.
    #[schema(value_type = String)]
    pub state: JobState,
    /// e.g. queued, moderating_prompt, generating, moderating_output, done, blocked.
    pub stage: String,
    pub progress: i16,
    pub attempt: u32,
    pub max_attempts: u32,
    /// True while a running job has been asked to stop.
    pub cancelling: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// For a finished generation: `{"images": [...]}`; for a finished
    /// upscale: `{"image": ...}`; images with signed URLs.
    pub result: Option<serde_json::Value>,
    pub error: Option<JobErrorBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobErrorBody {
    /// e.g. `content_blocked`, `cancelled`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageResource {
    pub id: Uuid,
    pub generation_id: Uuid,
    pub width: u32,
    pub height: u32,
    pub content_type: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
    /// Signed, expiring URL that serves the bytes.
    pub url: String,
    pub url_expires_at: DateTime<Utc>,
}

impl AppState {
    /// A signed URL for an image's bytes, valid for `api.signed_url_ttl_secs`.
    pub fn image_url(&self, image: &ImageRecord) -> (String, DateTime<Utc>) {
        let expires =
            Utc::now() + chrono::Duration::seconds(self.config.signed_url_ttl_secs as i64);
        (self.signer.object_url(&image.object_key, expires), expires)
    }

    pub fn image_resource(&self, image: &ImageRecord) -> ImageResource {
        let (url, url_expires_at) = self.image_url(image);
        ImageResource {
            id: image.id,
            generation_id: image.generation_id,
            width: image.width,
            height: image.height,
            content_type: image.content_type.clone(),
            bytes: image.bytes,
            created_at: image.created_at,
            url,
            url_expires_at,
        }
    }

    pub async fn job_resource(
        &self,
        job: JobRecord,
    ) -> Result<JobResource, kiln_store::StoreError> {
        let result = match (&job.result, job.state, job.kind.as_str()) {
            (Some(result), JobState::Succeeded, GenerateImage::KIND) => {
                let images = match typed::<GenerateImageResult>(result) {
                    Some(done) => self.store.images_of_generation(done.generation_id).await?,
                    None => Vec::new(),
                };
                Some(serde_json::json!({
                    "images": images.iter().map(|i| self.image_resource(i)).collect::<Vec<_>>(),
                }))
            }
            (Some(result), JobState::Succeeded, UpscaleImage::KIND) => {
                let image = match (
                    typed::<UpscaleImageResult>(result),
                    job.owner.as_deref().and_then(|o| o.parse().ok()),
                ) {
                    (Some(done), Some(owner)) => self.store.image(done.image_id, owner).await?,
                    _ => None,
                };
                Some(serde_json::json!({ "image": image.map(|i| self.image_resource(&i)) }))
            }
            (result, _, _) => result.clone(),
        };
        let error = match job.state {
            JobState::Failed | JobState::Cancelled => job.errors.last().map(|e| JobErrorBody {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            _ => None,
        };
        Ok(JobResource {
            id: job.id,
            kind: job.kind,
            stage: job.stage.unwrap_or_else(|| match job.state {
                JobState::Cancelled => "cancelled".to_owned(),
                JobState::Failed => "failed".to_owned(),
                _ => "queued".to_owned(),
            }),
            state: job.state,
            progress: job.progress,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            cancelling: job.cancel_requested && !job.state.is_final(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            result,
            error,
        })
    }
}

/// A stored result read as its kind's result type; `None` when it does not
/// have that shape (nothing is shown for it, as for a missing image).
fn typed<R: DeserializeOwned>(result: &serde_json::Value) -> Option<R> {
    R::deserialize(result).ok()
}
