//! Change events on PostgreSQL (`NOTIFY` sent by the store after each
//! commit, heard by every store's listener) and SQLite (told by the store
//! itself): every write a worker or a long-polling client waits on
//! announces itself. A write that
//! forgot to would leave workers idle or clients waiting out their poll.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use kiln_jobs::Probe;
use kiln_store::{Completion, Failure, NewJob, Store, StoreEvent, testing::TestDatabase};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use uuid::Uuid;

kiln_store::both_databases!(
    enqueue_and_bulk_enqueue_wake_the_queue,
    claim_progress_and_completion_are_changes,
    failure_snooze_and_release_are_changes,
    cancelling_tells_the_running_worker,
    resuming_a_queue_wakes_it,
    a_rescued_job_is_a_change,
    final_outcomes_are_changes,
    a_new_generation_wakes_its_queue,
    a_batch_of_generations_wakes_its_queue,
    changes_of_jobs_without_an_owner_are_not_announced,
    another_store_on_the_database_hears_the_writes,
);

const LEASE: Duration = Duration::from_secs(30);

fn job() -> NewJob {
    // Owned: Postgres announces changes of jobs that have an owner.
    NewJob::of(&Probe::default())
        .unwrap()
        .owner(kiln_jobs::UserId(Uuid::now_v7()))
}

/// Subscribes, and on Postgres waits until the listener hears: it connects
/// in the background, and what is sent before it listens is not heard.
async fn listening(store: &Store) -> Receiver<StoreEvent> {
    let mut events = store.subscribe();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            store.resume_queue("warm-up").await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    match events.recv().await {
                        Ok(StoreEvent::JobsAvailable(Some(q))) if q == "warm-up" => return,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => panic!("event stream closed"),
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the store's events never arrived");
    events
}

/// Waits for an event that `wanted` accepts, skipping others.
async fn expect(
    events: &mut Receiver<StoreEvent>,
    what: &str,
    wanted: impl Fn(&StoreEvent) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) if wanted(&e) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no event for {what}");
}

fn changed(id: Uuid) -> impl Fn(&StoreEvent) -> bool {
    move |e| *e == StoreEvent::JobChanged(id)
}

fn available_on(queue: &'static str) -> impl Fn(&StoreEvent) -> bool {
    move |e| match e {
        StoreEvent::JobsAvailable(Some(q)) => q == queue,
        StoreEvent::JobsAvailable(None) => true,
        _ => false,
    }
}

async fn claim_one(store: &Store) -> kiln_store::ClaimedJob {
    let mut claimed = store
        .claim("w", &["default".to_owned()], 1, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

async fn enqueue_and_bulk_enqueue_wake_the_queue(store: Store, _: &TestDatabase) {
    let mut events = listening(&store).await;
    store.enqueue(job()).await.unwrap();
    expect(&mut events, "enqueue", available_on("default")).await;
    store
        .enqueue_many(vec![job().queue("bulk"), job().queue("bulk")])
        .await
        .unwrap();
    expect(&mut events, "bulk enqueue", available_on("bulk")).await;
}

async fn claim_progress_and_completion_are_changes(store: Store, _: &TestDatabase) {
    let id = store.enqueue(job()).await.unwrap().id;
    let mut events = listening(&store).await;
    let claimed = claim_one(&store).await;
    expect(&mut events, "claim", changed(id)).await;
    assert!(
        store
            .set_progress(claimed.lease, Some("working"), 50)
            .await
            .unwrap()
    );
    expect(&mut events, "progress", changed(id)).await;
    let done = Completion {
        lease: claimed.lease,
        result: serde_json::json!({}),
    };
    assert_eq!(store.complete(&[done]).await.unwrap(), 1);
    expect(&mut events, "completion", changed(id)).await;
}

async fn failure_snooze_and_release_are_changes(store: Store, _: &TestDatabase) {
    let id = store.enqueue(job()).await.unwrap().id;
    let mut events = listening(&store).await;

    let claimed = claim_one(&store).await;
    let failure = Failure {
        code: "flaky".into(),
        message: "try again".into(),
        retry_in: Some(Duration::ZERO),
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());
    expect(&mut events, "failure", changed(id)).await;

    let claimed = claim_one(&store).await;
    assert!(store.snooze(claimed.lease, Duration::ZERO).await.unwrap());
    expect(&mut events, "snooze", changed(id)).await;

    let claimed = claim_one(&store).await;
    let mut events = listening(&store).await;
    assert_eq!(store.release(&[claimed.lease]).await.unwrap(), 1);
    expect(&mut events, "release", changed(id)).await;
    let mut events = listening(&store).await;
    let claimed = claim_one(&store).await;
    store.release(&[claimed.lease]).await.unwrap();
    expect(
        &mut events,
        "a released job to claim",
        available_on("default"),
    )
    .await;
}

async fn cancelling_tells_the_running_worker(store: Store, _: &TestDatabase) {
    let waiting = store.enqueue(job().queue("other")).await.unwrap().id;
    let running = store.enqueue(job()).await.unwrap().id;
    let claimed = claim_one(&store).await;
    let mut events = listening(&store).await;

    store.cancel(waiting, None).await.unwrap();
    expect(&mut events, "cancelling a waiting job", changed(waiting)).await;

    store.cancel(running, None).await.unwrap();
    expect(&mut events, "cancelling a running job", move |e| {
        *e == StoreEvent::CancelRequested(running)
    })
    .await;
    assert!(
        store
            .finish_cancelled(claimed.lease, "cancelled by its owner")
            .await
            .unwrap()
    );
    expect(&mut events, "a cancelled job stopping", changed(running)).await;
}

async fn resuming_a_queue_wakes_it(store: Store, _: &TestDatabase) {
    store.pause_queue("default").await.unwrap();
    store.enqueue(job()).await.unwrap();
    let mut events = listening(&store).await;
    store.resume_queue("default").await.unwrap();
    expect(&mut events, "resume", available_on("default")).await;
}

async fn a_rescued_job_is_a_change(store: Store, _: &TestDatabase) {
    let id = store.enqueue(job()).await.unwrap().id;
    store
        .claim("w", &["default".to_owned()], 1, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut events = listening(&store).await;
    let rescued = store.rescue_expired(5).await.unwrap();
    assert_eq!(rescued.len(), 1);
    expect(&mut events, "rescue", changed(id)).await;
}

async fn a_new_generation_wakes_its_queue(store: Store, _: &TestDatabase) {
    use kiln_jobs::{GenerateImage, Job};
    let owner = kiln_store::testing::account(&store).await;
    let mut events = listening(&store).await;
    store
        .create_generation(kiln_store::generations::NewGeneration {
            owner,
            input: kiln_store::generations::GenerationInput {
                prompt: "a red fox".into(),
                model: "dev".into(),
                width: 512,
                height: 512,
                n: 1,
                reference_urls: vec![],
                request_hash: "h".into(),
                credits: 0,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    expect(
        &mut events,
        "a new generation",
        available_on(GenerateImage::QUEUE),
    )
    .await;
}

async fn a_batch_of_generations_wakes_its_queue(store: Store, _: &TestDatabase) {
    use kiln_jobs::{GenerateImage, Job};
    let owner = kiln_store::testing::account(&store).await;
    let mut events = listening(&store).await;
    let item = kiln_store::generations::GenerationInput {
        prompt: "a red fox".into(),
        model: "dev".into(),
        width: 512,
        height: 512,
        n: 1,
        reference_urls: vec![],
        request_hash: "h".into(),
        credits: 0,
        webhook: None,
        then: None,
        traceparent: None,
    };
    store
        .create_generation_batch(kiln_store::generations::NewGenerationBatch {
            owner,
            items: vec![item.clone(), item],
            request_hash: "b".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    expect(
        &mut events,
        "a batch of generations",
        available_on(GenerateImage::QUEUE),
    )
    .await;
}

/// Nobody long-polls a system job: its claims and completions (most of a
/// busy queue's writes) send nothing, on either database.
async fn changes_of_jobs_without_an_owner_are_not_announced(store: Store, _: &TestDatabase) {
    let mut events = listening(&store).await;
    let system = store
        .enqueue(NewJob::of(&Probe::default()).unwrap())
        .await
        .unwrap()
        .id;
    let claimed = claim_one(&store).await;
    assert_eq!(claimed.lease.id, system);
    assert!(!claimed.lease.owned);
    store
        .complete(&[Completion {
            lease: claimed.lease,
            result: serde_json::json!({}),
        }])
        .await
        .unwrap();
    // An owned job's change after them: once it is heard, anything sent
    // before it would have been heard too.
    let owned = store.enqueue(job()).await.unwrap().id;
    let claimed = claim_one(&store).await;
    assert_eq!(claimed.lease.id, owned);
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(StoreEvent::JobChanged(id)) if id == owned => return,
                Ok(StoreEvent::JobChanged(id)) => panic!("a change of {id} was announced"),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the owned job's change never arrived");
}

/// Another process on the same Postgres database (here: a second store)
/// hears what this one wrote; on SQLite there is only one process.
async fn another_store_on_the_database_hears_the_writes(store: Store, db: &TestDatabase) {
    if !db.is_postgres() {
        return;
    }
    let other = kiln_store::connect(&kiln_store::ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: std::time::Duration::ZERO,
        pii: store.pii(),
    })
    .await
    .unwrap();
    let mut events = listening(&other).await;
    let id = store.enqueue(job()).await.unwrap().id;
    expect(
        &mut events,
        "another store's enqueue",
        available_on("default"),
    )
    .await;
    let claimed = claim_one(&store).await;
    expect(&mut events, "another store's claim", changed(id)).await;
    store.cancel(id, None).await.unwrap();
    expect(&mut events, "another store's cancel", |e| {
        *e == StoreEvent::CancelRequested(claimed.lease.id)
    })
    .await;
}

/// A job that ends moves to `finished_jobs`: the move is a change too.
async fn final_outcomes_are_changes(store: Store, _: &TestDatabase) {
    let failed = store.enqueue(job()).await.unwrap().id;
    let lost = store.enqueue(job().max_attempts(1)).await.unwrap().id;
    let mut events = listening(&store).await;

    let claimed = claim_one(&store).await;
    let failure = Failure {
        code: "broken".into(),
        message: "for good".into(),
        retry_in: None,
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());
    expect(&mut events, "a final failure", changed(failed)).await;

    store
        .claim("w", &["default".to_owned()], 1, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut events = listening(&store).await;
    let rescued = store.rescue_expired(5).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, kiln_store::JobState::Failed);
    expect(&mut events, "a rescue that ends the job", changed(lost)).await;
}
