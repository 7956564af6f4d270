//! What clients see of jobs and images: the job and image resources the
//! API answers with and webhook deliveries carry, built in one place.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kiln_jobs::{
    DataExport, DataExportResult, GenerateImage, GenerateImageResult, Job, UpscaleImage,
    UpscaleImageResult, UserId,
};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{JobRecord, JobState, Store, StoreError, UrlSigner, generations::ImageRecord};

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
    /// upscale: `{"image": ...}`; images with signed URLs. For a finished
    /// data export: `{"url", "expires_at", "expired", "available_until",
    /// "bytes", "counts"}`, `url` a signed link to the ZIP (null once the
    /// export expired).
    pub result: Option<serde_json::Value>,
    /// Why it failed, was cancelled, or (retryable) why its last attempt
    /// did not succeed.
    pub error: Option<JobErrorBody>,
    /// When a retryable or scheduled job runs next.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The job whose success enqueued this one (a follow-up).
    pub parent_id: Option<Uuid>,
    /// The jobs its success enqueued (a generation's `then`), oldest first.
    pub children: Vec<ChildJob>,
}

/// A follow-up as its parent's resource lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChildJob {
    pub id: Uuid,
    pub kind: String,
    #[schema(value_type = String)]
    pub state: JobState,
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

/// Builds resources: signs their links and reads the images their results
/// show.
#[derive(Clone)]
pub struct Presenter {
    pub store: Store,
    pub signer: std::sync::Arc<UrlSigner>,
    /// Put before every link (`https://kiln.example.com`) when the reader
    /// is not the API's own client (a webhook receiver); `None`: links are
    /// paths on the API.
    pub base_url: Option<String>,
    /// How long an image link works.
    pub image_url_ttl: std::time::Duration,
    /// How long an export link works (never past the export's end).
    pub export_link_ttl: std::time::Duration,
    /// How long a finished export is kept (`retention.export_days`).
    pub export_days: u32,
}

impl Presenter {
    fn link(&self, object_key: &str, expires: DateTime<Utc>) -> String {
        let path = self.signer.object_url(object_key, expires);
        match &self.base_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path,
        }
    }

    /// A signed URL for an image's bytes, valid for `image_url_ttl`.
    pub fn image_url(&self, image: &ImageRecord) -> (String, DateTime<Utc>) {
        let expires = Utc::now() + duration(self.image_url_ttl);
        (self.link(&image.object_key, expires), expires)
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

    /// A finished export as clients see it: `url` is signed now, valid for
    /// `api.export_link_ttl_secs` but never past the export's end
    /// (`retention.export_days` after it finished, when retention deletes
    /// the file); after that `url` is null and `expired` true. The object
    /// key stays inside.
    fn export_result(
        &self,
        done: DataExportResult,
        finished_at: Option<DateTime<Utc>>,
    ) -> serde_json::Value {
        let now = Utc::now();
        let kept = chrono::Duration::days(i64::from(self.export_days));
        let ends = finished_at.unwrap_or(now) + kept;
        let expires = (now + duration(self.export_link_ttl)).min(ends);
        let expired = expires <= now;
        let url = (!expired).then(|| self.link(&done.object_key, expires));
        serde_json::json!({
            "url": url,
            "expires_at": (!expired).then_some(expires),
            "expired": expired,
            "available_until": ends,
            "bytes": done.bytes,
            "counts": done.counts,
        })
    }

    pub async fn job_resource(&self, job: JobRecord) -> Result<JobResource, StoreError> {
        let mut one = self.job_resources(vec![job]).await?;
        one.pop()
            .ok_or_else(|| StoreError::Corrupt("a job's resource went missing".into()))
    }

    /// [`Presenter::job_resource`] for a page of jobs, with the images their
    /// results show read in one query per kind and their follow-ups in one,
    /// not one per job.
    pub async fn job_resources(
        &self,
        jobs: Vec<JobRecord>,
    ) -> Result<Vec<JobResource>, StoreError> {
        let shown: Vec<Shown> = jobs.iter().map(Shown::of).collect();
        let images = self.result_images(&shown).await?;
        let mut children = self.children(&jobs).await?;
        Ok(jobs
            .into_iter()
            .zip(shown)
            .map(|(job, shown)| {
                let children = children.remove(&job.id).unwrap_or_default();
                let mut resource = self.resource(job, shown, &images);
                resource.children = children;
                resource
            })
            .collect())
    }

    /// The follow-ups of those jobs that may have some: only a success
    /// enqueues them.
    async fn children(
        &self,
        jobs: &[JobRecord],
    ) -> Result<HashMap<Uuid, Vec<ChildJob>>, StoreError> {
        let parents: Vec<Uuid> = jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .map(|j| j.id)
            .collect();
        let mut children: HashMap<Uuid, Vec<ChildJob>> = HashMap::new();
        if parents.is_empty() {
            return Ok(children);
        }
        for child in self.store.children_of(&parents).await? {
            if let Some(parent) = child.parent_id {
                children.entry(parent).or_default().push(ChildJob {
                    id: child.id,
                    kind: child.kind,
                    state: child.state,
                });
            }
        }
        Ok(children)
    }

    /// Reads every image the given results show.
    async fn result_images(&self, shown: &[Shown]) -> Result<ResultImages, StoreError> {
        let mut generations = Vec::new();
        let mut upscaled: HashMap<UserId, Vec<Uuid>> = HashMap::new();
        for s in shown {
            match *s {
                Shown::Generation(Some(id)) => generations.push(id),
                Shown::Upscale(Some(image)) => {
                    upscaled.entry(image.owner).or_default().push(image.id)
                }
                _ => {}
            }
        }
        let mut images = ResultImages::default();
        if !generations.is_empty() {
            for image in self.store.images_of_generations(&generations).await? {
                images
                    .of_generation
                    .entry(image.generation_id)
                    .or_default()
                    .push(image);
            }
        }
        for (owner, ids) in upscaled {
            for image in self.store.images_by_ids(&ids, owner).await? {
                images.by_id.insert(image.id, image);
            }
        }
        Ok(images)
    }

    fn resource(&self, job: JobRecord, shown: Shown, images: &ResultImages) -> JobResource {
        let result = match shown {
            Shown::Generation(id) => {
                let generated = id
                    .and_then(|id| images.of_generation.get(&id))
                    .map_or(&[][..], Vec::as_slice);
                Some(serde_json::json!({
                    "images": generated.iter().map(|i| self.image_resource(i)).collect::<Vec<_>>(),
                }))
            }
            Shown::Upscale(wanted) => {
                let image =
                    wanted.and_then(|w| images.by_id.get(&w.id).filter(|i| i.owner == w.owner));
                Some(serde_json::json!({ "image": image.map(|i| self.image_resource(i)) }))
            }
            Shown::Export => job
                .result
                .as_ref()
                .and_then(typed::<DataExportResult>)
                .map(|done| self.export_result(done, job.finished_at)),
            Shown::AsStored => job.result.clone(),
        };
        let last_error = job.errors.last().map(|e| JobErrorBody {
            code: e.code.clone(),
            message: e.message.clone(),
        });
        let error = match job.state {
            JobState::Failed | JobState::Retryable => last_error,
            // Cancelled while waiting, its last entry is an earlier
            // attempt's error: the reason is the cancellation.
            JobState::Cancelled => Some(
                last_error
                    .filter(|e| e.code == "cancelled")
                    .unwrap_or_else(|| JobErrorBody {
                        code: "cancelled".to_owned(),
                        message: "the job was cancelled before it ran to the end".to_owned(),
                    }),
            ),
            _ => None,
        };
        let next_run_at =
            matches!(job.state, JobState::Retryable | JobState::Scheduled).then_some(job.run_at);
        JobResource {
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
            next_run_at,
            parent_id: job.parent_id,
            children: Vec::new(),
        }
    }
}

/// What a job's resource shows as its result.
#[derive(Debug, Clone, Copy)]
enum Shown {
    /// A finished generation: the images of this generation (none when its
    /// result does not read as a generation's).
    Generation(Option<Uuid>),
    /// A finished upscale: this image of its owner, when it still exists.
    Upscale(Option<OwnedImage>),
    /// A finished data export: its counts, and a link while it is kept.
    Export,
    /// Any other job: its result as stored.
    AsStored,
}

#[derive(Debug, Clone, Copy)]
struct OwnedImage {
    id: Uuid,
    owner: UserId,
}

impl Shown {
    fn of(job: &JobRecord) -> Shown {
        match (&job.result, job.state, job.kind.as_str()) {
            (Some(result), JobState::Succeeded, GenerateImage::KIND) => Shown::Generation(
                typed::<GenerateImageResult>(result).map(|done| done.generation_id),
            ),
            (Some(result), JobState::Succeeded, UpscaleImage::KIND) => {
                Shown::Upscale(typed::<UpscaleImageResult>(result).zip(job.owner).map(
                    |(done, owner)| OwnedImage {
                        id: done.image_id,
                        owner,
                    },
                ))
            }
            (Some(_), JobState::Succeeded, DataExport::KIND) => Shown::Export,
            _ => Shown::AsStored,
        }
    }
}

/// The images a set of results show, read together.
#[derive(Default)]
struct ResultImages {
    /// Generated images by generation, oldest first.
    of_generation: HashMap<Uuid, Vec<ImageRecord>>,
    /// Upscaled images by id.
    by_id: HashMap<Uuid, ImageRecord>,
}

/// A stored result read as its kind's result type; `None` when it does not
/// have that shape (nothing is shown for it, as for a missing image).
fn typed<R: DeserializeOwned>(result: &serde_json::Value) -> Option<R> {
    R::deserialize(result).ok()
}

/// A setting's duration as chrono's, saturating (a year of seconds is
/// already "never" for a link).
fn duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(3650))
}
