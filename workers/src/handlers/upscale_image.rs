//! Upscale one of the owner's images: hand the provider a short-lived
//! signed link to it (the offline `dev` upscaler gets the bytes), moderate
//! the result like any output, strip its metadata, store it as a new image
//! of the same generation. Cancelling the job cancels the provider's request.

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use chrono::Utc;
use kiln_jobs::{JobError, UpscaleImage, UpscaleImageResult, stage};
use kiln_store::{Objects, generations::ImageRecord};
use uuid::Uuid;

use super::{
    links::ObjectLinks,
    moderation::{Content, Subject, gate},
};
use crate::{Handler, JobContext, Outcome};
use kiln_providers::{
    image_metadata::strip_output,
    moderation::Moderator,
    upscale::{UpscaleRequest, Upscaler},
};

pub struct UpscaleImageHandler {
    pub upscaler: Arc<dyn Upscaler>,
    pub moderator: Arc<dyn Moderator>,
    pub objects: Objects,
    pub links: ObjectLinks,
}

fn missing() -> JobError {
    JobError::permanent("image_missing", "the image to upscale is gone")
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    }
}

#[async_trait]
impl Handler<UpscaleImage> for UpscaleImageHandler {
    async fn run(
        &self,
        job: UpscaleImage,
        ctx: &JobContext,
    ) -> Result<Outcome<UpscaleImageResult>, JobError> {
        let store = ctx.store();
        let owner = ctx
            .owner
            .ok_or_else(|| JobError::permanent("owner_missing", "an upscale needs its owner"))?;
        let source = store
            .image(job.image_id, owner)
            .await?
            .ok_or_else(missing)?;
        let bytes = self
            .objects
            .get(&source.object_key)
            .await?
            .ok_or_else(missing)?;

        ctx.progress(stage::UPSCALING, 10).await?;
        let started = Instant::now();
        let upscaled = self
            .upscaler
            .upscale(
                &UpscaleRequest {
                    image_url: self.links.url(&source.object_key),
                    scale: job.scale,
                    source_png: Some(bytes),
                },
                ctx.cancel_token(),
            )
            .await?;
        let provider_latency_ms = started.elapsed().as_millis() as u64;

        ctx.progress(stage::MODERATING_OUTPUT, 80).await?;
        let subject = Subject {
            owner,
            generation_id: source.generation_id,
        };
        let output = Content::Image(&upscaled.bytes);
        gate(ctx, &*self.moderator, &subject, output, "upscaled image").await?;
        // Judged as the provider made it; stored without its metadata.
        let bytes = strip_output(upscaled.bytes).await?;

        let id = Uuid::now_v7();
        let record = ImageRecord {
            id,
            generation_id: source.generation_id,
            owner,
            object_key: format!("images/{id}.{}", extension(&upscaled.content_type)),
            width: upscaled.width,
            height: upscaled.height,
            content_type: upscaled.content_type.clone(),
            bytes: bytes.len() as i64,
            created_at: Utc::now(),
            source_image_id: Some(source.id),
        };
        self.objects.put(&record.object_key, bytes).await?;
        store.add_image(&record).await?;
        ctx.progress(stage::DONE, 100).await?;
        Ok(Outcome::Done(UpscaleImageResult {
            image_id: id,
            source_image_id: source.id,
            width: record.width,
            height: record.height,
            provider: self.upscaler.name().to_owned(),
            provider_latency_ms,
        }))
    }
}
