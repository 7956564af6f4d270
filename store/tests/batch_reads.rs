//! The batch image reads give, in one query, what the one-at-a-time reads
//! give for each id, on both databases.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{DurationRound, TimeDelta, Utc};
use kiln_store::{
    Store,
    generations::{GenerationEnqueued, ImageRecord, NewGeneration},
    testing::{self, TestDatabase},
};
use uuid::Uuid;

kiln_store::both_databases!(batch_reads_match_single_reads);

async fn generation(store: &Store, owner: kiln_jobs::UserId, prompt: &str) -> Uuid {
    let created = store
        .create_generation(NewGeneration {
            owner,
            input: kiln_store::generations::GenerationInput {
                prompt: prompt.into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n: 2,
                reference_urls: Vec::new(),
                request_hash: prompt.into(),
                credits: 0,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    let GenerationEnqueued::Created { job } = created else {
        panic!("not created: {created:?}");
    };
    store.generation_for_job(job.id).await.unwrap().unwrap().id
}

async fn image(
    store: &Store,
    generation_id: Uuid,
    owner: kiln_jobs::UserId,
    source: Option<Uuid>,
) -> Uuid {
    let id = Uuid::now_v7();
    store
        .add_image(&ImageRecord {
            id,
            generation_id,
            owner,
            object_key: format!("images/{id}.png"),
            width: 256,
            height: 256,
            content_type: "image/png".into(),
            bytes: 10,
            created_at: Utc::now()
                .duration_trunc(TimeDelta::milliseconds(1))
                .unwrap(),
            source_image_id: source,
        })
        .await
        .unwrap();
    id
}

async fn batch_reads_match_single_reads(store: Store, _: &TestDatabase) {
    let owner = testing::account(&store).await;
    let other = testing::account(&store).await;
    let first = generation(&store, owner, "a lighthouse").await;
    let second = generation(&store, owner, "a harbour").await;
    let theirs = generation(&store, other, "a cliff").await;
    let a = image(&store, first, owner, None).await;
    let b = image(&store, first, owner, None).await;
    let c = image(&store, second, owner, None).await;
    let upscaled = image(&store, first, owner, Some(a)).await;
    let deleted = image(&store, second, owner, None).await;
    store.delete_image(deleted, owner).await.unwrap();
    let foreign = image(&store, theirs, other, None).await;

    // By generation, then oldest first: what the single reads give.
    let mut expected = store.images_of_generation(first).await.unwrap();
    expected.extend(store.images_of_generation(second).await.unwrap());
    expected.sort_by_key(|i| (i.generation_id, i.id));
    let batch = store.images_of_generations(&[second, first]).await.unwrap();
    assert_eq!(batch, expected);
    // Generated ones only: not the upscale, not the deleted one.
    assert_eq!(sorted_ids(&batch), sorted(vec![a, b, c]));
    assert!(store.images_of_generations(&[]).await.unwrap().is_empty());

    let wanted = [c, upscaled, deleted, foreign, Uuid::now_v7(), a];
    let mut expected = Vec::new();
    for id in wanted {
        expected.extend(store.image(id, owner).await.unwrap());
    }
    expected.sort_by_key(|i| i.id);
    assert_eq!(store.images_by_ids(&wanted, owner).await.unwrap(), expected);
    // The owner's live images only.
    assert_eq!(sorted_ids(&expected), sorted(vec![a, c, upscaled]));
    assert!(store.images_by_ids(&[], owner).await.unwrap().is_empty());
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

fn sorted_ids(images: &[ImageRecord]) -> Vec<Uuid> {
    sorted(images.iter().map(|i| i.id).collect())
}
