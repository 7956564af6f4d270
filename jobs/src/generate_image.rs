use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Job;

/// Moderate the prompt, generate, moderate every output image, deliver.
/// The payload is only the generation's id: the prompt stays in the
/// `generations` table, not in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateImage {
    pub generation_id: Uuid,
    /// What follows its success (the request's `then`). Left out of the
    /// payload when none, so such payloads read as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<FollowUps>,
}

/// The jobs a generation's success enqueues, asked for with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUps {
    /// Upscale each image it delivers.
    pub upscale: Option<UpscaleEach>,
}

/// An upscale of each delivered image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpscaleEach {
    /// One of [`crate::UpscaleImage::SCALES`].
    pub scale: u32,
    /// The price of one upscale when the generation was asked for: the
    /// generation reserves it for each image it may deliver, and each
    /// upscale reserves it again for itself as it goes in.
    pub credits: u32,
}

impl FollowUps {
    /// Credits to reserve up front for the follow-ups of a generation of
    /// `images` images.
    pub fn credits(&self, images: u32) -> u32 {
        self.upscale.map_or(0, |u| u.credits.saturating_mul(images))
    }
}

impl Job for GenerateImage {
    type Result = GenerateImageResult;
    const KIND: &'static str = "generate_image";
    const QUEUE: &'static str = "generation";
    const MAX_ATTEMPTS: u32 = 5;
    const TIMEOUT: Duration = Duration::from_secs(180);
}

/// A finished generation: the images it delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateImageResult {
    pub generation_id: Uuid,
    pub images: Vec<GeneratedImage>,
}

/// One delivered image of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedImage {
    pub id: Uuid,
    pub width: u32,
    pub height: u32,
}

/// The stages image jobs report, in order.
pub mod stage {
    pub const MODERATING_PROMPT: &str = "moderating_prompt";
    /// Fetching, checking and re-hosting the client's reference images.
    pub const FETCHING_REFERENCES: &str = "fetching_references";
    pub const GENERATING: &str = "generating";
    /// An upscale's provider call.
    pub const UPSCALING: &str = "upscaling";
    pub const MODERATING_OUTPUT: &str = "moderating_output";
    pub const DONE: &str = "done";
    pub const BLOCKED: &str = "blocked";
}
