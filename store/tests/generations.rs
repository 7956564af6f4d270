//! Generations, their images and an owner's job list, each behaviour on
//! PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{DurationRound, TimeDelta, Utc};
use kiln_jobs::{GenerateImage, Job, UserId};
use kiln_store::{
    JobState, NewJob, Store,
    generations::{Generation, GenerationEnqueued, ImageRecord, JobFilter, NewGeneration},
    testing::{self, TestDatabase},
};
use uuid::Uuid;

kiln_store::both_databases!(
    a_generation_is_stored_with_its_job,
    an_idempotency_key_returns_the_first_generation_or_conflicts,
    images_belong_to_their_owner_and_page_newest_first,
    deleted_images_disappear_from_every_read,
    a_retry_starts_with_no_generated_images,
    an_owners_jobs_filter_and_page,
);

fn request(owner: UserId, key: Option<&str>, hash: &str) -> NewGeneration {
    NewGeneration {
        owner,
        prompt: "a red fox in fresh snow".into(),
        model: "dev".into(),
        width: 512,
        height: 512,
        n: 2,
        reference_urls: vec!["https://example.com/fox.png".into()],
        request_hash: hash.into(),
        idempotency_key: key.map(str::to_owned),
    }
}

/// A stored generation of `owner`'s, through the store's own path.
async fn stored(store: &Store, owner: UserId, hash: &str) -> Generation {
    let job_id = created(
        store
            .create_generation(request(owner, None, hash))
            .await
            .unwrap(),
    );
    store.generation_for_job(job_id).await.unwrap().unwrap()
}

fn created(e: GenerationEnqueued) -> Uuid {
    match e {
        GenerationEnqueued::Created { job_id } => job_id,
        other => panic!("expected a new generation, got {other:?}"),
    }
}

fn image(owner: UserId, generation_id: Uuid, source: Option<Uuid>) -> ImageRecord {
    ImageRecord {
        id: Uuid::now_v7(),
        generation_id,
        owner,
        object_key: format!("images/{}.png", Uuid::now_v7()),
        width: 512,
        height: 512,
        content_type: "image/png".into(),
        bytes: 1234,
        // Both databases keep milliseconds or finer.
        created_at: Utc::now()
            .duration_trunc(TimeDelta::milliseconds(1))
            .unwrap(),
        source_image_id: source,
    }
}

async fn a_generation_is_stored_with_its_job(store: Store, _: &TestDatabase) {
    let owner = testing::account(&store).await;
    let job_id = created(
        store
            .create_generation(request(owner, None, "h1"))
            .await
            .unwrap(),
    );
    let job = store.get(job_id).await.unwrap().unwrap();
    assert_eq!(job.kind, GenerateImage::KIND);
    assert_eq!(job.queue, GenerateImage::QUEUE);
    assert_eq!(job.owner, Some(owner));
    assert_eq!(job.state, JobState::Available);

    let g = store.generation_for_job(job_id).await.unwrap().unwrap();
    assert_eq!(g.job_id, job_id);
    assert_eq!(g.owner, owner);
    assert_eq!(g.prompt, "a red fox in fresh snow");
    assert_eq!((g.width, g.height, g.n), (512, 512, 2));
    assert_eq!(g.reference_urls, vec!["https://example.com/fox.png"]);
    let payload: GenerateImage = serde_json::from_value(job.payload).unwrap();
    assert_eq!(payload.generation_id, g.id);
    assert_eq!(store.generation(g.id).await.unwrap(), Some(g.clone()));
    assert!(store.generation(Uuid::now_v7()).await.unwrap().is_none());

    store.finish_generation(g.id, "dev", 42).await.unwrap();
}

async fn an_idempotency_key_returns_the_first_generation_or_conflicts(
    store: Store,
    _: &TestDatabase,
) {
    let owner = testing::account(&store).await;
    let first = created(
        store
            .create_generation(request(owner, Some("k1"), "h1"))
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .create_generation(request(owner, Some("k1"), "h1"))
            .await
            .unwrap(),
        GenerationEnqueued::Existing { job_id: first }
    );
    assert_eq!(
        store
            .create_generation(request(owner, Some("k1"), "other request"))
            .await
            .unwrap(),
        GenerationEnqueued::KeyReused
    );
    // The same key is another owner's own.
    created(
        store
            .create_generation(request(testing::account(&store).await, Some("k1"), "h1"))
            .await
            .unwrap(),
    );
    let jobs = store
        .jobs_of_owner(
            owner,
            &JobFilter {
                limit: 10,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "a retried request makes no second job");
}

async fn images_belong_to_their_owner_and_page_newest_first(store: Store, _: &TestDatabase) {
    let (ada, bob) = (
        testing::account(&store).await,
        testing::account(&store).await,
    );
    let g = stored(&store, ada, "h").await;
    let images: Vec<ImageRecord> = (0..3).map(|_| image(ada, g.id, None)).collect();
    for i in &images {
        store.add_image(i).await.unwrap();
    }

    assert_eq!(store.images_of_generation(g.id).await.unwrap(), images);
    assert_eq!(
        store.image(images[0].id, ada).await.unwrap().as_ref(),
        Some(&images[0])
    );
    assert!(
        store.image(images[0].id, bob).await.unwrap().is_none(),
        "another owner's image is not found"
    );

    let page = store.images_of_owner(ada, None, 2).await.unwrap();
    assert_eq!(page, vec![images[2].clone(), images[1].clone()]);
    let next = store
        .images_of_owner(ada, Some(page[1].id), 2)
        .await
        .unwrap();
    assert_eq!(next, vec![images[0].clone()]);
    assert!(
        store
            .images_of_owner(bob, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn deleted_images_disappear_from_every_read(store: Store, _: &TestDatabase) {
    let (ada, bob) = (
        testing::account(&store).await,
        testing::account(&store).await,
    );
    let g = stored(&store, ada, "h").await;
    let kept = image(ada, g.id, None);
    let gone = image(ada, g.id, None);
    store.add_image(&kept).await.unwrap();
    store.add_image(&gone).await.unwrap();

    assert!(
        store.delete_image(gone.id, bob).await.unwrap().is_none(),
        "nobody deletes another owner's image"
    );
    assert_eq!(
        store.delete_image(gone.id, ada).await.unwrap(),
        Some(gone.clone())
    );
    assert!(
        store.delete_image(gone.id, ada).await.unwrap().is_none(),
        "deleted once"
    );
    assert!(store.image(gone.id, ada).await.unwrap().is_none());
    assert_eq!(
        store.images_of_generation(g.id).await.unwrap(),
        vec![kept.clone()]
    );
    assert_eq!(
        store.images_of_owner(ada, None, 10).await.unwrap(),
        vec![kept]
    );
}

async fn a_retry_starts_with_no_generated_images(store: Store, _: &TestDatabase) {
    let ada = testing::account(&store).await;
    let first = stored(&store, ada, "a").await;
    let generated = image(ada, first.id, None);
    let upscaled = image(ada, first.id, Some(generated.id));
    store.add_image(&generated).await.unwrap();
    store.add_image(&upscaled).await.unwrap();
    assert_eq!(
        store.images_of_generation(first.id).await.unwrap(),
        vec![generated.clone()],
        "upscales are not among a generation's generated images"
    );

    // A retried attempt (before any upscale could exist) starts clean.
    let retried = stored(&store, ada, "b").await;
    store
        .add_image(&image(ada, retried.id, None))
        .await
        .unwrap();
    store.delete_images_of_generation(retried.id).await.unwrap();
    assert!(
        store
            .images_of_generation(retried.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.images_of_generation(first.id).await.unwrap(),
        vec![generated],
        "another generation's images stay"
    );
    assert_eq!(store.image(upscaled.id, ada).await.unwrap(), Some(upscaled));
}

async fn an_owners_jobs_filter_and_page(store: Store, _: &TestDatabase) {
    let (ada, bob) = (
        testing::account(&store).await,
        testing::account(&store).await,
    );
    let probe = || NewJob::of(&kiln_jobs::Probe::default()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.enqueue(probe().owner(ada)).await.unwrap().id);
    }
    let generation = created(
        store
            .create_generation(request(ada, None, "h"))
            .await
            .unwrap(),
    );
    store.enqueue(probe().owner(bob)).await.unwrap();
    store.cancel(ids[0], None).await.unwrap();

    let all = |before, limit| JobFilter {
        before,
        limit,
        ..JobFilter::default()
    };
    let listed: Vec<Uuid> = store
        .jobs_of_owner(ada, &all(None, 10))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        listed,
        vec![generation, ids[2], ids[1], ids[0]],
        "newest first"
    );

    let page: Vec<Uuid> = store
        .jobs_of_owner(ada, &all(Some(ids[2]), 1))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(page, vec![ids[1]], "the cursor pages on");

    let cancelled = JobFilter {
        state: Some(JobState::Cancelled),
        ..all(None, 10)
    };
    let listed: Vec<Uuid> = store
        .jobs_of_owner(ada, &cancelled)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, vec![ids[0]]);

    let generations = JobFilter {
        kind: Some(GenerateImage::KIND.into()),
        ..all(None, 10)
    };
    let listed: Vec<Uuid> = store
        .jobs_of_owner(ada, &generations)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, vec![generation]);
}
