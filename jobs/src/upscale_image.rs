use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Job;

/// Upscale one of the owner's images by `scale`, moderate the result,
/// store it as a new image of the same generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpscaleImage {
    pub image_id: Uuid,
    pub scale: u32,
}

impl UpscaleImage {
    /// The factors a client may ask for.
    pub const SCALES: [u32; 2] = [2, 4];
}

impl Job for UpscaleImage {
    type Result = UpscaleImageResult;
    const KIND: &'static str = "upscale_image";
    const QUEUE: &'static str = "generation";
    const MAX_ATTEMPTS: u32 = 5;
    // fal queues can be long; the provider client gives up on its own
    // `upscale.max_wait_ms` (10 minutes by default) first.
    const TIMEOUT: Duration = Duration::from_secs(15 * 60);
}

/// A finished upscale: the new image, the one it came from, and which
/// provider made it in how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpscaleImageResult {
    pub image_id: Uuid,
    pub source_image_id: Uuid,
    pub width: u32,
    pub height: u32,
    pub provider: String,
    pub provider_latency_ms: u64,
}
