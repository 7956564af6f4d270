//! What clients see of jobs and images: built by the store's
//! [`Presenter`](kiln_store::resources::Presenter) (webhook deliveries
//! carry the same resources), with the API's links and lifetimes.

use std::time::Duration;

use kiln_store::{JobRecord, StoreError, generations::ImageRecord, resources::Presenter};

pub use kiln_store::resources::{ImageResource, JobResource};

use crate::AppState;

impl AppState {
    /// Links are paths on this API, images valid for
    /// `api.signed_url_ttl_secs`, exports for `api.export_link_ttl_secs`.
    pub fn presenter(&self) -> Presenter {
        Presenter {
            store: self.store.clone(),
            signer: self.signer.clone(),
            base_url: None,
            image_url_ttl: Duration::from_secs(self.config.signed_url_ttl_secs),
            export_link_ttl: Duration::from_secs(self.config.export_link_ttl_secs),
            export_days: self.retention.export_days,
        }
    }

    pub fn image_resource(&self, image: &ImageRecord) -> ImageResource {
        self.presenter().image_resource(image)
    }

    pub async fn job_resource(&self, job: JobRecord) -> Result<JobResource, StoreError> {
        self.presenter().job_resource(job).await
    }

    /// [`AppState::job_resource`] for a page of jobs, reading their images
    /// together.
    pub async fn job_resources(
        &self,
        jobs: Vec<JobRecord>,
    ) -> Result<Vec<JobResource>, StoreError> {
        self.presenter().job_resources(jobs).await
    }
}
