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
