//! The retention purge, on PostgreSQL and SQLite, with a clock the test
//! sets: each data class is kept exactly its period (a row just inside
//! stays, just outside goes), and a purge cut off after one batch and run
//! again ends where an uninterrupted one would.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::{DataClass, OrderId, Probe, RetentionPurge, RetentionSettings, UserId};
use kiln_store::{
    Store,
    access_log::{AccessEvent, Origin},
    generations::{ModerationRecord, ModerationSubject},
    orders::{NewOrder, Payment, PaymentNotification},
    testing::{self, TestDatabase},
};
use kiln_workers::{Clock, testing::TestWorker};
use uuid::Uuid;

kiln_store::both_databases!(
    each_class_is_kept_its_period_and_purged_after,
    a_purge_cut_off_after_one_batch_ends_the_same_when_run_again,
    objects_no_row_points_at_go_a_day_after_they_were_written,
);

/// One row (or two) of every class, all made now.
struct Rows {
    user: UserId,
    order: OrderId,
    /// The generation the decision is about (no row: decisions outlive them).
    generation: Uuid,
    finished_job: Uuid,
}

async fn rows_of_every_class(store: &Store, worker: &TestWorker) -> Rows {
    let user = testing::account(store).await;
    let origin = Origin {
        ip: Some("203.0.113.7".into()),
        user_agent: Some("test".into()),
    };
    store
        .record_access(Some(user), AccessEvent::Login, &origin)
        .await
        .unwrap();
    assert!(store.note_ip(user, "203.0.113.7").await.unwrap());
    let generation = Uuid::now_v7();
    store
        .record_moderation(&ModerationRecord {
            id: Uuid::now_v7(),
            owner: user,
            generation_id: Some(generation),
            subject: ModerationSubject::Prompt,
            provider: "dev".into(),
            allowed: true,
            categories: Vec::new(),
            scores: BTreeMap::new(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    let order = OrderId(Uuid::new_v4());
    store
        .open_order(&NewOrder {
            id: order,
            user,
            provider: "dev".into(),
            pack: "starter".into(),
            credits: 100,
        })
        .await
        .unwrap();
    store
        .apply_payment(&PaymentNotification {
            provider: "dev".into(),
            event_id: format!("evt_{}", Uuid::now_v7().simple()),
            event_type: "order.paid".into(),
            payment: Some(Payment {
                order,
                account: user,
                transaction_id: format!("txn_{}", Uuid::now_v7().simple()),
                amount: 500,
                currency: "USD".into(),
                paid_at: Utc::now(),
            }),
        })
        .await
        .unwrap();
    let finished_job = worker.perform(Probe::default()).await.unwrap().job_id;
    Rows {
        user,
        order,
        generation,
        finished_job,
    }
}

/// What a purge at `now` removed, by class (classes with nothing: 0).
async fn purge_at(store: &Store, now: DateTime<Utc>) -> BTreeMap<DataClass, u64> {
    let worker = TestWorker::with_retention(
        store.clone(),
        &RetentionSettings::default(),
        Clock::fixed(now),
    );
    worker
        .perform(RetentionPurge {})
        .await
        .unwrap()
        .expect_done()
        .purged
}

/// The counts of a purge with nothing due in the other classes (deleted
/// accounts and exports: this test makes none).
fn counts(finished: u64, access: u64, moderation: u64, payments: u64) -> BTreeMap<DataClass, u64> {
    BTreeMap::from([
        (DataClass::FinishedJobs, finished),
        (DataClass::AccessLog, access),
        (DataClass::Moderation, moderation),
        (DataClass::Payments, payments),
        (DataClass::DeletedAccounts, 0),
        (DataClass::OrphanedObjects, 0),
        (DataClass::Exports, 0),
    ])
}

/// Which of the rows are still stored: (access log, moderation, order).
async fn present(store: &Store, rows: &Rows) -> (bool, bool, bool) {
    let access = !store
        .access_log(rows.user, None, 10)
        .await
        .unwrap()
        .is_empty();
    let moderation = !store
        .moderation_of_generation(rows.generation)
        .await
        .unwrap()
        .is_empty();
    let order = store.order(rows.order).await.unwrap().is_some();
    (access, moderation, order)
}

async fn each_class_is_kept_its_period_and_purged_after(store: Store, _: &TestDatabase) {
    let rows = rows_of_every_class(&store, &TestWorker::new(store.clone())).await;
    let now = Utc::now();
    let days = |d: i64| now + TimeDelta::days(d);
    let minute = TimeDelta::minutes(1);

    // A week and a day on (finished jobs are kept in whole UTC days, so
    // that is the first time the job is surely out): only the job goes,
    // and the purge jobs of this test that finished before each run.
    let purged = purge_at(&store, days(8)).await;
    assert_eq!(purged, counts(1, 0, 0, 0));
    assert!(store.get(rows.finished_job).await.unwrap().is_none());

    // Just inside 180 days, then just past it: the access log (the entry
    // and the account's known address) and the decision go together.
    let purged = purge_at(&store, days(180) - minute).await;
    assert_eq!(purged, counts(1, 0, 0, 0), "the previous purge job");
    assert_eq!(present(&store, &rows).await, (true, true, true));
    let purged = purge_at(&store, days(180) + minute).await;
    assert_eq!(purged, counts(1, 2, 1, 0));
    assert_eq!(present(&store, &rows).await, (false, false, true));
    // The address is new again, so its next use is noticed.
    assert!(store.note_ip(rows.user, "203.0.113.7").await.unwrap());

    // Payment records: five years (of 366 days), to the minute.
    let five_years = days(5 * 366);
    assert_eq!(
        purge_at(&store, five_years - minute).await,
        counts(1, 1, 0, 0)
    );
    assert!(store.order(rows.order).await.unwrap().is_some());
    assert_eq!(
        purge_at(&store, five_years + minute).await,
        counts(1, 0, 0, 2)
    );
    assert!(store.order(rows.order).await.unwrap().is_none());
}

async fn a_purge_cut_off_after_one_batch_ends_the_same_when_run_again(
    store: Store,
    _: &TestDatabase,
) {
    let worker = TestWorker::new(store.clone());
    let first = rows_of_every_class(&store, &worker).await;
    let second = rows_of_every_class(&store, &worker).await;
    let later = Utc::now() + TimeDelta::days(181);
    // One batch of one row per class, as a purge killed after its first
    // statement leaves things.
    let cutoff = Utc::now() + TimeDelta::seconds(1);
    for class in [DataClass::AccessLog, DataClass::Moderation] {
        assert!(store.purge(class, cutoff, 1).await.unwrap() >= 1);
    }
    // Run again in full: everything of the period is gone, as if whole.
    let purged = purge_at(&store, later).await;
    // 4 access rows and 2 decisions, less the 2 + 1 the cut-off batch took.
    assert_eq!(purged[&DataClass::AccessLog], 2);
    assert_eq!(purged[&DataClass::Moderation], 1);
    for rows in [&first, &second] {
        assert_eq!(present(&store, rows).await, (false, false, true));
    }
    // And again: nothing left to do.
    let purged = purge_at(&store, later).await;
    assert_eq!(purged[&DataClass::AccessLog], 0);
    assert_eq!(purged[&DataClass::Moderation], 0);
}

async fn objects_no_row_points_at_go_a_day_after_they_were_written(store: Store, _: &TestDatabase) {
    use kiln_jobs::GenerateImage;
    use kiln_store::generations::{GenerationEnqueued, GenerationInput, NewGeneration};
    let objects = kiln_store::Objects::memory();
    let retention = RetentionSettings::default();
    let today = TestWorker::over(store.clone(), &retention, Clock::system(), objects.clone());
    // A real image, with its row.
    let owner = testing::account(&store).await;
    let GenerationEnqueued::Created { job } = store
        .create_generation(NewGeneration {
            owner,
            input: GenerationInput {
                prompt: "a quiet harbour".into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n: 1,
                reference_urls: Vec::new(),
                request_hash: Uuid::now_v7().to_string(),
                credits: 0,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap()
    else {
        panic!("a fresh generation");
    };
    let payload: GenerateImage =
        serde_json::from_value(store.get(job.id).await.unwrap().unwrap().payload).unwrap();
    today
        .perform_as(owner, payload.clone())
        .await
        .unwrap()
        .expect_done();
    let kept = store.images_of_owner(owner, None, 10).await.unwrap()[0]
        .object_key
        .clone();
    let kept_ref = format!("refs/{}/0.png", payload.generation_id);
    // Objects whose rows are gone (or never came), and one kiln does not name.
    let orphans = [
        format!("images/{}.png", Uuid::now_v7()),
        format!("refs/{}/0.jpg", Uuid::now_v7()),
    ];
    let foreign = "images/readme.txt".to_owned();
    for key in orphans.iter().chain([&kept_ref, &foreign]) {
        objects
            .put(key, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let sweep_at = |days: i64| {
        let worker = TestWorker::over(
            store.clone(),
            &retention,
            Clock::fixed(Utc::now() + TimeDelta::days(days) + TimeDelta::minutes(1)),
            objects.clone(),
        );
        async move {
            worker
                .perform(RetentionPurge {})
                .await
                .unwrap()
                .expect_done()
                .purged[&DataClass::OrphanedObjects]
        }
    };
    // Written less than a day before the purge: kept, rows or not.
    assert_eq!(sweep_at(0).await, 0);
    // A day on, the two orphans go; the image, the generation's reference
    // and the key kiln does not name stay.
    assert_eq!(sweep_at(1).await, 2);
    for key in &orphans {
        assert!(!objects.exists(key).await.unwrap(), "{key}");
    }
    for key in [&kept, &kept_ref, &foreign] {
        assert!(objects.exists(key).await.unwrap(), "{key}");
    }
}
