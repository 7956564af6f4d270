//! The job catalogue: every kind of job kiln runs, as typed payloads with
//! their queue, attempts, timeout and priority beside them. No I/O here.

mod backoff;
mod catalogue;
mod error;
mod generate_image;
mod ids;
mod job;
mod notice;
mod probe;
mod prune_jobs;
mod send_notice;
mod upscale_image;

pub use backoff::Backoff;
pub use catalogue::{KINDS, KindSpec, spec};
pub use error::{DecodeError, JobError};
pub use generate_image::{GenerateImage, stage};
pub use ids::UserId;
pub use job::{Job, decode};
pub use notice::{Notice, escape_html};
pub use probe::{Probe, ProbeFailure};
pub use prune_jobs::PruneJobs;
pub use send_notice::{SendEmail, SendSms};
pub use upscale_image::UpscaleImage;
