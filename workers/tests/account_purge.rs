//! Account deletion and erasure in process, on PostgreSQL and SQLite: the
//! request hides the account and frees its address, `account_purge`
//! erases its images (objects first), generations, jobs, credits and
//! sessions and detaches what the policy keeps, and the retention purge
//! erases a deleted account whose own purge never ran.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{TimeDelta, Utc};
use kiln_jobs::{
    AccountPurge, DataClass, GenerateImage, RetentionPurge, RetentionSettings, UserId,
};
use kiln_store::{
    Store,
    accounts::{Identifier, NewUser, UserCreated},
    generations::{GenerationEnqueued, GenerationInput, NewGeneration},
    testing::{self, TestDatabase},
};
use kiln_workers::{Clock, testing::TestWorker};
use uuid::Uuid;

kiln_store::both_databases!(
    a_deleted_account_is_erased_and_its_address_freed,
    cancelling_an_owners_jobs_refunds_what_waited,
    the_retention_purge_erases_a_deleted_account_left_past_its_period,
);

async fn generation(store: &Store, owner: UserId, credits: u32) -> GenerateImage {
    let enqueued = store
        .create_generation(NewGeneration {
            owner,
            input: GenerationInput {
                prompt: "a harbour at dawn".into(),
                model: "dev-image-1".into(),
                width: 256,
                height: 256,
                n: 2,
                reference_urls: Vec::new(),
                request_hash: Uuid::now_v7().to_string(),
                credits,
                webhook: None,
                then: None,
                traceparent: None,
            },
            idempotency_key: None,
        })
        .await
        .unwrap();
    let GenerationEnqueued::Created { job } = enqueued else {
        panic!("a fresh generation: {enqueued:?}");
    };
    let payload = store.get(job.id).await.unwrap().unwrap().payload;
    serde_json::from_value(payload).unwrap()
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        identifier: Identifier::Email(email.into()),
        password_hash: "$2b$04$test.account.password.hash.is.never.checked".into(),
        birth_date: chrono::NaiveDate::from_ymd_opt(1990, 12, 10).unwrap(),
        referral_code: Uuid::now_v7().simple().to_string(),
        referred_by_code: None,
        locale: Default::default(),
    }
}

async fn a_deleted_account_is_erased_and_its_address_freed(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let email = format!("{}@example.com", Uuid::now_v7().simple());
    let UserCreated::Created(user) = store.create_user(new_user(&email)).await.unwrap() else {
        panic!("a fresh address");
    };
    store.grant_credits(user, 10, "test").await.unwrap();
    let done = generation(&store, user, 0).await;
    worker.perform_as(user, done).await.unwrap().expect_done();
    let images = store.images_to_erase(user, 100).await.unwrap();
    assert!(images.is_empty(), "a live account has nothing to erase");
    let keys: Vec<String> = store
        .images_of_owner(user, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.object_key)
        .collect();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert!(worker.objects().exists(key).await.unwrap());
    }
    // Waiting when the account goes: cancelled, not run.
    generation(&store, user, 2).await;

    let purge = store.delete_account(user).await.unwrap();
    assert!(purge.is_some());
    assert_eq!(store.delete_account(user).await.unwrap(), None, "once");
    let identifier = Identifier::Email(email.clone());
    assert!(store.login_record(&identifier).await.unwrap().is_none());
    assert!(store.password_hash(user).await.unwrap().is_none());
    // The address is free at once.
    assert!(matches!(
        store.create_user(new_user(&email)).await.unwrap(),
        UserCreated::Created(_)
    ));

    let result = worker
        .perform(AccountPurge { user })
        .await
        .unwrap()
        .expect_done();
    assert_eq!(result.images, 2);
    assert_eq!(result.generations, 2);
    // The waiting generation, and the first generation's own job
    // (`perform_as` ran a copy of its payload).
    assert_eq!(result.jobs_cancelled, 2);
    for key in &keys {
        assert!(!worker.objects().exists(key).await.unwrap(), "{key}");
    }
    assert!(
        store
            .images_of_owner(user, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.access_log(user, None, 10).await.unwrap().is_empty());
    assert_eq!(store.credit_balance(user).await.unwrap().balance, 0);
    assert!(store.unfinished_jobs_of(user, 10).await.unwrap().is_empty());
    // Erasing again finds nothing: a retried purge is harmless.
    assert!(!store.erase_account_rows(user).await.unwrap());
    let again = worker
        .perform(AccountPurge { user })
        .await
        .unwrap()
        .expect_done();
    assert_eq!((again.images, again.generations), (0, 0));
}

async fn cancelling_an_owners_jobs_refunds_what_waited(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    store.grant_credits(user, 10, "test").await.unwrap();
    generation(&store, user, 3).await;
    generation(&store, user, 4).await;
    let held = store.credit_balance(user).await.unwrap();
    assert_eq!((held.balance, held.reserved), (3, 7));
    assert_eq!(store.cancel_jobs_of(user, &[]).await.unwrap(), (2, 0));
    let after = store.credit_balance(user).await.unwrap();
    assert_eq!((after.balance, after.reserved), (10, 0));
    assert_eq!(store.cancel_jobs_of(user, &[]).await.unwrap(), (0, 0));
}

async fn the_retention_purge_erases_a_deleted_account_left_past_its_period(
    store: Store,
    _: &TestDatabase,
) {
    let user = testing::account(&store).await;
    store.delete_account(user).await.unwrap().unwrap();
    let purge_at = |days: i64| {
        let worker = TestWorker::with_retention(
            store.clone(),
            &RetentionSettings::default(),
            Clock::fixed(Utc::now() + TimeDelta::days(days)),
        );
        async move {
            worker
                .perform(RetentionPurge {})
                .await
                .unwrap()
                .expect_done()
                .purged[&DataClass::DeletedAccounts]
        }
    };
    // Its own purge never ran: within the 30 days it waits for it...
    assert_eq!(purge_at(29).await, 0);
    assert!(
        !store
            .deleted_accounts(Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // ...and past them retention erases it.
    assert_eq!(purge_at(31).await, 1);
    assert!(
        store
            .deleted_accounts(Utc::now() + TimeDelta::days(31), 10)
            .await
            .unwrap()
            .is_empty()
    );
}
