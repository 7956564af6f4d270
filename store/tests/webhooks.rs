//! Webhook registrations and their events on both databases: the database
//! queues a `deliver_webhook` job in the transaction that changes a
//! watched job, whichever path changes it, with the policy the job
//! catalogue gives the kind.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use chrono::Utc;
use kiln_jobs::{DeliverWebhook, Job, Probe, UserId, WebhookEvent, WebhookEvents, spec};
use kiln_store::{
    CancelOutcome, ClaimedJob, Completion, NewJob, Store, WebhookTarget,
    testing::{TestDatabase, account},
    webhooks::{Delivery, DeliveryOutcome},
};

kiln_store::both_databases!(
    a_completion_queues_one_event_with_the_catalogues_policy,
    all_events_follow_each_state_and_stage,
    a_cancel_before_running_is_a_completion_too,
    jobs_without_a_webhook_queue_nothing,
    deliveries_are_recorded_in_order,
    erasure_and_retention_remove_registrations,
);

const LEASE: Duration = Duration::from_secs(30);

fn watched(owner: UserId, events: WebhookEvents) -> NewJob {
    NewJob::of(&Probe::default())
        .unwrap()
        .owner(owner)
        .webhook(Some(WebhookTarget {
            url: "https://hooks.example.com/kiln".into(),
            events,
        }))
}

async fn claim(store: &Store, queue: &str) -> Vec<ClaimedJob> {
    store
        .claim("test-worker", &[queue.to_owned()], 100, LEASE)
        .await
        .unwrap()
}

/// The events queued so far, oldest first (claimed, so each is read once).
async fn events(store: &Store) -> Vec<DeliverWebhook> {
    let mut events: Vec<(chrono::DateTime<Utc>, DeliverWebhook)> = Vec::new();
    for claimed in claim(store, DeliverWebhook::QUEUE).await {
        assert_eq!(claimed.kind, DeliverWebhook::KIND);
        let event: DeliverWebhook = serde_json::from_value(claimed.payload).unwrap();
        assert_eq!(
            claimed.lease.id, event.event_id,
            "the event id is the job's"
        );
        let at = chrono::DateTime::from_timestamp_millis(event.occurred_at_ms).unwrap();
        events.push((at, event));
    }
    events.sort_by_key(|(at, e)| (*at, e.event_id));
    events.into_iter().map(|(_, e)| e).collect()
}

async fn complete(store: &Store, claimed: &ClaimedJob) {
    let done = Completion {
        lease: claimed.lease,
        result: serde_json::json!({}),
    };
    assert_eq!(store.complete(&[done]).await.unwrap(), 1);
}

async fn a_completion_queues_one_event_with_the_catalogues_policy(store: Store, _: &TestDatabase) {
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::Completed))
        .await
        .unwrap()
        .id;
    let claimed = claim(&store, Probe::QUEUE).await;
    assert_eq!(claimed.len(), 1);
    store
        .set_progress(claimed[0].lease, Some("working"), 50)
        .await
        .unwrap();
    assert!(
        events(&store).await.is_empty(),
        "`completed` hears the end only"
    );
    complete(&store, &claimed[0]).await;

    let hook = store.webhook(id).await.unwrap().unwrap();
    assert_eq!(hook.owner, owner);
    assert_eq!(hook.events, WebhookEvents::Completed);
    let all = events(&store).await;
    assert_eq!(all.len(), 1);
    let event = &all[0];
    assert_eq!(event.job_id, id);
    assert_eq!(event.event, WebhookEvent::Completed);
    assert_eq!(event.state, "succeeded");

    // The trigger writes the kind's policy itself: it must be the
    // catalogue's.
    let job = store.get(event.event_id).await.unwrap().unwrap();
    let kind = spec(DeliverWebhook::KIND).unwrap();
    assert_eq!(job.queue, kind.queue);
    assert_eq!(job.priority, kind.priority);
    assert_eq!(job.max_attempts, kind.max_attempts);
    assert_eq!(job.schema_version, kind.schema_version);
    assert_eq!(job.owner, None, "deliveries are system jobs");
}

async fn all_events_follow_each_state_and_stage(store: Store, _: &TestDatabase) {
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::All))
        .await
        .unwrap()
        .id;
    let claimed = claim(&store, Probe::QUEUE).await;
    store
        .set_progress(claimed[0].lease, Some("working"), 10)
        .await
        .unwrap();
    // Progress alone is no event: the stage did not change.
    store
        .set_progress(claimed[0].lease, Some("working"), 60)
        .await
        .unwrap();
    complete(&store, &claimed[0]).await;

    // Two changes may fall in one millisecond: compared as a set, with
    // the completion last in time.
    let events = events(&store).await;
    let last = events.iter().map(|e| e.occurred_at_ms).max().unwrap();
    let mut seen: Vec<(String, String, Option<String>)> = events
        .into_iter()
        .map(|e| {
            assert_eq!(e.job_id, id);
            if e.event == WebhookEvent::Completed {
                assert_eq!(e.occurred_at_ms, last);
            }
            (e.event.as_str().to_owned(), e.state, e.stage)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("job.changed".into(), "running".into(), None),
            (
                "job.changed".into(),
                "running".into(),
                Some("working".into())
            ),
            (
                "job.completed".into(),
                "succeeded".into(),
                Some("working".into())
            ),
        ]
    );
}

async fn a_cancel_before_running_is_a_completion_too(store: Store, _: &TestDatabase) {
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::Completed))
        .await
        .unwrap()
        .id;
    assert!(matches!(
        store.cancel(id, Some(owner)).await.unwrap(),
        CancelOutcome::Cancelled
    ));
    let all = events(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].event, WebhookEvent::Completed);
    assert_eq!(all[0].state, "cancelled");
}

async fn jobs_without_a_webhook_queue_nothing(store: Store, _: &TestDatabase) {
    let owner = account(&store).await;
    let id = store
        .enqueue(NewJob::of(&Probe::default()).unwrap().owner(owner))
        .await
        .unwrap()
        .id;
    let claimed = claim(&store, Probe::QUEUE).await;
    complete(&store, &claimed[0]).await;
    assert!(events(&store).await.is_empty());
    assert_eq!(store.webhook(id).await.unwrap(), None);
    // Bulk enqueues write registrations too, for the jobs that have one.
    let owner = account(&store).await;
    let ids = store
        .enqueue_many(vec![
            NewJob::of(&Probe::default()).unwrap().owner(owner),
            watched(owner, WebhookEvents::All),
        ])
        .await
        .unwrap();
    assert_eq!(store.webhook(ids[0]).await.unwrap(), None);
    assert_eq!(
        store.webhook(ids[1]).await.unwrap().map(|h| h.events),
        Some(WebhookEvents::All)
    );
}

async fn deliveries_are_recorded_in_order(store: Store, _: &TestDatabase) {
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::Completed))
        .await
        .unwrap()
        .id;
    let event_id = uuid::Uuid::now_v7();
    let at = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let attempt = |n: u32, status: Option<u16>, outcome, error: Option<&str>| Delivery {
        job_id: id,
        event_id,
        event: "job.completed".into(),
        attempt: n,
        status_code: status,
        outcome,
        error: error.map(str::to_owned),
        duration_ms: 12,
        at,
    };
    let written = vec![
        attempt(
            1,
            None,
            DeliveryOutcome::Retrying,
            Some("connection_failed"),
        ),
        attempt(2, Some(503), DeliveryOutcome::Retrying, Some("status_503")),
        attempt(3, Some(200), DeliveryOutcome::Delivered, None),
    ];
    for d in &written {
        store.record_delivery(d).await.unwrap();
    }
    assert_eq!(store.deliveries(id, 100).await.unwrap(), written);
    assert_eq!(store.deliveries(id, 2).await.unwrap().len(), 2);
    assert!(
        store
            .deliveries(uuid::Uuid::now_v7(), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn erasure_and_retention_remove_registrations(store: Store, _: &TestDatabase) {
    // Retention: a finished job pruned takes its registration along.
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::Completed))
        .await
        .unwrap()
        .id;
    let claimed = claim(&store, Probe::QUEUE).await;
    complete(&store, &claimed[0]).await;
    let pruned = store
        .prune_finished(Utc::now() + chrono::Duration::days(1), 1000)
        .await
        .unwrap();
    assert!(pruned >= 1);
    assert_eq!(store.webhook(id).await.unwrap(), None);

    // Erasure: the account's registrations go with it.
    let owner = account(&store).await;
    let id = store
        .enqueue(watched(owner, WebhookEvents::Completed))
        .await
        .unwrap()
        .id;
    assert!(store.delete_account(owner).await.unwrap().is_some());
    store.cancel_jobs_of(owner, &[]).await.unwrap();
    assert!(store.erase_account_rows(owner).await.unwrap());
    assert_eq!(store.webhook(id).await.unwrap(), None);
}
