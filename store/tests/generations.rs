//! Generations, their images and an owner's job list, each behaviour on
//! PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{DurationRound, TimeDelta, Utc};
use kiln_jobs::{GenerateImage, Job, UserId};
use kiln_store::{
    JobState, NewJob, Store,
    generations::{
        BatchEnqueued, Generation, GenerationEnqueued, ImageRecord, JobFilter, NewGeneration,
        NewGenerationBatch,
    },
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
    a_batch_stores_its_generations_in_order_under_one_key,
    concurrent_batches_with_one_key_make_one_batch,
    concurrent_generations_share_commits_and_keep_their_own_answers,
);

fn request(owner: UserId, key: Option<&str>, hash: &str) -> NewGeneration {
    NewGeneration {
        owner,
        input: kiln_store::generations::GenerationInput {
            prompt: "a red fox in fresh snow".into(),
            model: "dev".into(),
            width: 512,
            height: 512,
            n: 2,
            reference_urls: vec!["https://example.com/fox.png".into()],
            request_hash: hash.into(),
            credits: 0,
            webhook: None,
            then: None,
            traceparent: None,
        },
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
        GenerationEnqueued::Created { job } => job.id,
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
    let enqueued = store
        .create_generation(request(owner, None, "h1"))
        .await
        .unwrap();
    let GenerationEnqueued::Created { job: answered } = enqueued else {
        panic!("not created: {enqueued:?}");
    };
    let job_id = answered.id;
    let job = store.get(job_id).await.unwrap().unwrap();
    assert_eq!(*answered, job, "the enqueue answers the job as stored");
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

fn batch(owner: UserId, key: Option<&str>, prompts: &[&str]) -> NewGenerationBatch {
    let items = prompts
        .iter()
        .map(|p| {
            let mut input = request(owner, None, p).input;
            input.prompt = (*p).to_owned();
            input
        })
        .collect();
    NewGenerationBatch {
        owner,
        items,
        request_hash: prompts.join("|"),
        idempotency_key: key.map(str::to_owned),
    }
}

fn created_batch(e: BatchEnqueued) -> Vec<Uuid> {
    match e {
        BatchEnqueued::Created { job_ids } => job_ids,
        other => panic!("expected a new batch, got {other:?}"),
    }
}

async fn a_batch_stores_its_generations_in_order_under_one_key(store: Store, _: &TestDatabase) {
    let owner = testing::account(&store).await;
    let prompts = ["a fox", "a heron", "a moth"];
    let job_ids = created_batch(
        store
            .create_generation_batch(batch(owner, Some("b1"), &prompts))
            .await
            .unwrap(),
    );
    assert_eq!(job_ids.len(), 3);
    for (job_id, prompt) in job_ids.iter().zip(prompts) {
        let g = store.generation_for_job(*job_id).await.unwrap().unwrap();
        assert_eq!(g.prompt, prompt);
        assert_eq!(g.owner, owner);
        let job = store.get(*job_id).await.unwrap().unwrap();
        assert_eq!(job.kind, GenerateImage::KIND);
        assert_eq!(job.owner, Some(owner));
        assert_eq!(job.state, JobState::Available);
        let payload: GenerateImage = serde_json::from_value(job.payload).unwrap();
        assert_eq!(payload.generation_id, g.id);
    }
    // One read gives every job of the batch.
    let mut read: Vec<Uuid> = store
        .get_many(&job_ids)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    read.sort();
    let mut expected = job_ids.clone();
    expected.sort();
    assert_eq!(read, expected);

    // The key answers with the same jobs in the same order, or conflicts.
    assert_eq!(
        store
            .create_generation_batch(batch(owner, Some("b1"), &prompts))
            .await
            .unwrap(),
        BatchEnqueued::Existing {
            job_ids: job_ids.clone()
        }
    );
    assert_eq!(
        store
            .create_generation_batch(batch(owner, Some("b1"), &["a fox"]))
            .await
            .unwrap(),
        BatchEnqueued::KeyReused
    );
    // A batch key is not a single generation's key, and is per owner.
    created(
        store
            .create_generation(request(owner, Some("b1"), "h"))
            .await
            .unwrap(),
    );
    created_batch(
        store
            .create_generation_batch(batch(testing::account(&store).await, Some("b1"), &prompts))
            .await
            .unwrap(),
    );
    // Without a key, every batch is new.
    let again = created_batch(
        store
            .create_generation_batch(batch(owner, None, &prompts))
            .await
            .unwrap(),
    );
    assert!(again.iter().all(|id| !job_ids.contains(id)));
    let all = store
        .jobs_of_owner(
            owner,
            &JobFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
}

async fn concurrent_batches_with_one_key_make_one_batch(store: Store, _: &TestDatabase) {
    let owner = testing::account(&store).await;
    let prompts = ["a fox", "a heron"];
    let tries = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_generation_batch(batch(owner, Some("same"), &prompts))
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<BatchEnqueued> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let made: Vec<&Vec<Uuid>> = outcomes
        .iter()
        .filter_map(|o| match o {
            BatchEnqueued::Created { job_ids } => Some(job_ids),
            _ => None,
        })
        .collect();
    assert_eq!(made.len(), 1, "{outcomes:?}");
    for o in &outcomes {
        match o {
            BatchEnqueued::Created { job_ids } | BatchEnqueued::Existing { job_ids } => {
                assert_eq!(job_ids, made[0])
            }
            BatchEnqueued::KeyReused => panic!("same batch seen as another: {outcomes:?}"),
        }
    }
    let all = store
        .jobs_of_owner(
            owner,
            &JobFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
}

/// Requests that arrive together are written in shared transactions (group
/// commit): each still gets its own job, in its own order, and a key sent
/// by several of them still makes one job.
async fn concurrent_generations_share_commits_and_keep_their_own_answers(
    store: Store,
    _: &TestDatabase,
) {
    let owner = testing::account(&store).await;
    let other = testing::account(&store).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        // Every fifth asks with one shared key and the same request.
        let (who, key, hash) = match i % 5 {
            0 => (owner, Some("shared"), "same".to_owned()),
            1 => (other, None, format!("h{i}")),
            _ => (owner, None, format!("h{i}")),
        };
        tasks.push(tokio::spawn(async move {
            let mut g = request(who, key, &hash);
            g.input.prompt = format!("prompt {i}");
            (i, store.create_generation(g).await.unwrap())
        }));
    }
    let mut created = Vec::new();
    let mut keyed = Vec::new();
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match (i % 5, outcome) {
            (0, GenerationEnqueued::Created { job }) => keyed.push(job.id),
            (0, GenerationEnqueued::Existing { job_id }) => keyed.push(job_id),
            (_, GenerationEnqueued::Created { job }) => {
                let g = store.generation_for_job(job.id).await.unwrap().unwrap();
                assert_eq!(
                    g.prompt,
                    format!("prompt {i}"),
                    "request {i} got another's job"
                );
                assert_eq!(job.owner, Some(if i % 5 == 1 { other } else { owner }));
                created.push(job.id);
            }
            (_, outcome) => panic!("request {i}: {outcome:?}"),
        }
    }
    keyed.dedup();
    assert_eq!(keyed.len(), 1, "one key, one job: {keyed:?}");
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 48, "every unkeyed request its own job");
    let filter = JobFilter {
        limit: 100,
        ..JobFilter::default()
    };
    let mine = store.jobs_of_owner(owner, &filter).await.unwrap();
    assert_eq!(
        mine.len(),
        36 + 1,
        "the owner's 36 unkeyed jobs and the keyed one"
    );
}
