use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use chrono::Utc;
use kiln_jobs::{GenerateImage, GenerateImageResult, GeneratedImage, JobError, stage};
use kiln_store::{
    Objects,
    generations::{Generation, ImageRecord},
};
use uuid::Uuid;

use crate::{
    Handler, JobContext, Outcome,
    handlers::{
        ObjectLinks,
        moderation::{Content, Subject, gate},
    },
};
use kiln_providers::{
    fetch::GuardedFetcher,
    image_metadata::{strip_output, strip_reference},
    images::{ImageGenerator, ImageRequest},
    moderation::Moderator,
};

/// Moderate the prompt, generate, moderate every output, strip its
/// metadata, deliver. Nothing generated is stored or visible before output
/// moderation allows it, and nothing is stored with its metadata.
pub struct GenerateImageHandler {
    pub generator: Arc<dyn ImageGenerator>,
    pub moderator: Arc<dyn Moderator>,
    pub objects: Objects,
    pub fetcher: Arc<GuardedFetcher>,
    pub links: ObjectLinks,
}

impl GenerateImageHandler {
    /// Fetches each reference image once (guarded), moderates it like any
    /// image, strips its metadata (EXIF, text) and re-hosts it under
    /// `refs/<generation>/`: the provider gets a signed link to kiln's
    /// copy, never the client's URL or the photo's EXIF.
    async fn rehost_references(
        &self,
        ctx: &JobContext,
        generation: &Generation,
    ) -> Result<Vec<String>, JobError> {
        let mut links = Vec::with_capacity(generation.reference_urls.len());
        for (index, url) in generation.reference_urls.iter().enumerate() {
            let image = self.fetcher.fetch_image(url).await?;
            let content = Content::Image(&image.bytes);
            gate(
                ctx,
                &*self.moderator,
                &subject(generation),
                content,
                "reference image",
            )
            .await?;
            let extension = image
                .content_type
                .strip_prefix("image/")
                .unwrap_or("bin")
                .replace("jpeg", "jpg");
            let key = format!("refs/{}/{index}.{extension}", generation.id);
            // Kept and passed on with its pixels only.
            let bytes = strip_reference(image.bytes).await?;
            self.objects.put(&key, bytes).await?;
            links.push(self.links.url(&key));
        }
        Ok(links)
    }
}

fn subject(generation: &Generation) -> Subject {
    Subject {
        owner: generation.owner,
        generation_id: generation.id,
    }
}

#[async_trait]
impl Handler<GenerateImage> for GenerateImageHandler {
    async fn run(
        &self,
        job: GenerateImage,
        ctx: &JobContext,
    ) -> Result<Outcome<GenerateImageResult>, JobError> {
        let store = ctx.store();
        let generation = store.generation(job.generation_id).await?.ok_or_else(|| {
            JobError::permanent("generation_missing", "the generation record is gone")
        })?;

        ctx.progress(stage::MODERATING_PROMPT, 5).await?;
        let prompt = Content::Text(&generation.prompt);
        gate(
            ctx,
            &*self.moderator,
            &subject(&generation),
            prompt,
            "prompt",
        )
        .await?;

        let reference_urls = if generation.reference_urls.is_empty() {
            Vec::new()
        } else {
            ctx.progress(stage::FETCHING_REFERENCES, 10).await?;
            self.rehost_references(ctx, &generation).await?
        };

        ctx.progress(stage::GENERATING, 20).await?;
        let started = Instant::now();
        let mut images = self
            .generator
            .generate(&ImageRequest {
                prompt: generation.prompt.clone(),
                model: generation.model.clone(),
                width: generation.width,
                height: generation.height,
                n: generation.n,
                reference_urls,
            })
            .await?;
        let provider_latency = started.elapsed();

        ctx.progress(stage::MODERATING_OUTPUT, 70).await?;
        for image in &images {
            let output = Content::Image(&image.png);
            gate(
                ctx,
                &*self.moderator,
                &subject(&generation),
                output,
                "generated image",
            )
            .await?;
        }

        // Moderation judged the provider's own bytes (the dev moderator
        // reads the prompt the dev generator wrote into them); what is
        // stored carries no prompt or other metadata.
        for image in &mut images {
            image.png = strip_output(image.png.clone()).await?;
        }

        // A retried attempt replaces what an earlier one may have stored.
        for old in store.images_of_generation(generation.id).await? {
            self.objects.delete(&old.object_key).await?;
        }
        store.delete_images_of_generation(generation.id).await?;
        let mut delivered = Vec::with_capacity(images.len());
        for image in images {
            let id = Uuid::now_v7();
            let record = ImageRecord {
                id,
                generation_id: generation.id,
                owner: generation.owner,
                object_key: format!("images/{id}.png"),
                width: image.width,
                height: image.height,
                content_type: "image/png".to_owned(),
                bytes: image.png.len() as i64,
                created_at: Utc::now(),
                source_image_id: None,
            };
            self.objects.put(&record.object_key, image.png).await?;
            store.add_image(&record).await?;
            delivered.push(GeneratedImage {
                id,
                width: record.width,
                height: record.height,
            });
        }
        store
            .finish_generation(
                generation.id,
                self.generator.name(),
                provider_latency.as_millis() as u64,
            )
            .await?;
        ctx.progress(stage::DONE, 100).await?;
        let follow_ups = follow_ups(job.then, &delivered)?;
        let result = GenerateImageResult {
            generation_id: generation.id,
            images: delivered,
        };
        if follow_ups.is_empty() {
            Ok(Outcome::Done(result))
        } else {
            Ok(Outcome::DoneThen(result, follow_ups))
        }
    }
}

/// The jobs a success enqueues (`then`): an upscale of each delivered
/// image at the price reserved for it when the generation was asked for.
/// Images blocked by moderation get none; their share goes back with the
/// generation's settlement.
fn follow_ups(
    then: Option<kiln_jobs::FollowUps>,
    delivered: &[GeneratedImage],
) -> Result<Vec<kiln_store::NewJob>, JobError> {
    let Some(upscale) = then.and_then(|t| t.upscale) else {
        return Ok(Vec::new());
    };
    delivered
        .iter()
        .map(|image| {
            let job = kiln_jobs::UpscaleImage {
                image_id: image.id,
                scale: upscale.scale,
            };
            kiln_store::NewJob::of(&job)
                .map(|job| job.reserving(upscale.credits))
                .map_err(|e| JobError::permanent("unserializable_payload", e.to_string()))
        })
        .collect()
}
