//! The credits ledger, on PostgreSQL and SQLite: a job reserves at enqueue
//! or is refused, and its end charges or refunds exactly once, whichever
//! write ends it. After every test the entries add up to the balance.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use chrono::{NaiveDate, TimeDelta, Utc};
use kiln_jobs::{Probe, UserId};
use kiln_store::{
    CancelOutcome, Completion, Failure, JobState, NewJob, Store, StoreError,
    accounts::{CodeCheck, Identifier, NewCode, NewUser, UserCreated},
    credits::{CreditBalance, EntryKind, VerificationGrants},
    testing::{TestDatabase, account},
};
use serde_json::json;
use uuid::Uuid;

kiln_store::both_databases!(
    a_success_charges_its_reservation,
    failures_cancellations_and_rescues_refund,
    a_short_balance_stores_nothing_and_keeps_the_key_free,
    concurrent_enqueues_never_overdraw,
    a_retried_job_is_charged_once,
    a_grant_is_given_once_per_reason,
    the_first_verification_grants_signup_and_referral_credits,
    grouped_generations_refuse_only_the_short_owner,
    entries_page_newest_first,
);

const LEASE: Duration = Duration::from_secs(30);

fn costing(owner: UserId, credits: u32) -> NewJob {
    NewJob::of(&Probe::default())
        .unwrap()
        .owner(owner)
        .reserving(credits)
}

/// The next job due, waiting out a retry's backoff (at most 5 s).
async fn claim_one(store: &Store, lease: Duration) -> kiln_store::ClaimedJob {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut claimed = store
            .claim("worker", &["default".to_owned()], 1, lease)
            .await
            .unwrap();
        if let Some(job) = claimed.pop() {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "no job came due");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn balance(store: &Store, user: UserId) -> CreditBalance {
    store.credit_balance(user).await.unwrap()
}

/// The entries add up to the stored sums.
async fn assert_ledger_agrees(store: &Store, user: UserId) {
    let entries = store.credit_entries(user, None, 10_000).await.unwrap();
    assert_eq!(
        CreditBalance::of_entries(&entries),
        balance(store, user).await,
        "the ledger of {user} does not add up: {entries:?}"
    );
}

async fn kinds(store: &Store, user: UserId) -> Vec<EntryKind> {
    let mut entries = store.credit_entries(user, None, 1000).await.unwrap();
    entries.reverse();
    entries.into_iter().map(|e| e.kind).collect()
}

async fn a_success_charges_its_reservation(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    assert!(store.grant_credits(ada, 5, "test").await.unwrap());
    let id = store.enqueue(costing(ada, 2)).await.unwrap().id;
    assert_eq!(
        balance(&store, ada).await,
        CreditBalance {
            balance: 3,
            reserved: 2
        }
    );

    let job = claim_one(&store, LEASE).await;
    assert_eq!(job.lease.id, id);
    let done = Completion {
        lease: job.lease,
        result: json!({}),
    };
    assert_eq!(
        store.complete(std::slice::from_ref(&done)).await.unwrap(),
        1
    );
    // The same completion again (a worker retrying its write) is not ours.
    assert_eq!(store.complete(&[done]).await.unwrap(), 0);

    assert_eq!(
        balance(&store, ada).await,
        CreditBalance {
            balance: 3,
            reserved: 0
        }
    );
    assert_eq!(
        kinds(&store, ada).await,
        [EntryKind::Grant, EntryKind::Reserve, EntryKind::Charge]
    );
    let entries = store.credit_entries(ada, None, 10).await.unwrap();
    assert_eq!(entries[0].job_id, Some(id));
    assert_eq!(entries[0].amount, 2);
    assert_eq!(entries[0].reason, "probe");
    assert_ledger_agrees(&store, ada).await;
}

async fn failures_cancellations_and_rescues_refund(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    store.grant_credits(ada, 10, "test").await.unwrap();

    // Cancelled while waiting.
    let waiting = store.enqueue(costing(ada, 1)).await.unwrap().id;
    assert_eq!(
        store.cancel(waiting, Some(ada)).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(balance(&store, ada).await.balance, 10);

    // Failed for good (a blocked prompt is a permanent failure).
    store.enqueue(costing(ada, 2)).await.unwrap();
    let job = claim_one(&store, LEASE).await;
    let blocked = Failure {
        code: "content_blocked".into(),
        message: "the prompt was blocked".into(),
        retry_in: None,
    };
    assert!(store.fail(job.lease, blocked.clone()).await.unwrap());
    // A second write of the same failure changes nothing.
    assert!(!store.fail(job.lease, blocked).await.unwrap());
    assert_eq!(balance(&store, ada).await.balance, 10);

    // Cancelled while running: its worker ends it.
    let running = store.enqueue(costing(ada, 3)).await.unwrap().id;
    let job = claim_one(&store, LEASE).await;
    store.cancel(running, Some(ada)).await.unwrap();
    assert!(
        store
            .finish_cancelled(job.lease, "cancelled")
            .await
            .unwrap()
    );

    // Lost by its worker, out of attempts: the rescue ends it.
    let lost = store
        .enqueue(costing(ada, 4).max_attempts(1))
        .await
        .unwrap()
        .id;
    claim_one(&store, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = store.rescue_expired(3).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].id, lost);
    assert_eq!(rescued[0].state, JobState::Failed);

    assert_eq!(
        balance(&store, ada).await,
        CreditBalance {
            balance: 10,
            reserved: 0
        }
    );
    let refunds = kinds(&store, ada)
        .await
        .into_iter()
        .filter(|k| *k == EntryKind::Refund)
        .count();
    assert_eq!(refunds, 4);
    assert_ledger_agrees(&store, ada).await;
}

async fn a_short_balance_stores_nothing_and_keeps_the_key_free(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    store.grant_credits(ada, 1, "test").await.unwrap();
    let keyed = || costing(ada, 2).idempotency_key("k1");

    let refused = store.enqueue(keyed()).await;
    assert!(
        matches!(refused, Err(StoreError::InsufficientCredits)),
        "{refused:?}"
    );
    assert!(
        store
            .enqueue_many(vec![costing(ada, 1), costing(ada, 1)])
            .await
            .is_err_and(|e| matches!(e, StoreError::InsufficientCredits)),
        "a bulk enqueue is all or nothing"
    );
    assert_eq!(
        balance(&store, ada).await,
        CreditBalance {
            balance: 1,
            reserved: 0
        }
    );
    assert!(
        store
            .claim("worker", &["default".to_owned()], 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a refused job must not exist"
    );

    // The key was not taken by the refused request: once paid for, the
    // same request makes its job.
    store.grant_credits(ada, 1, "test-2").await.unwrap();
    let enqueued = store.enqueue(keyed()).await.unwrap();
    assert!(enqueued.created);
    assert_eq!(balance(&store, ada).await.balance, 0);
    // And a retry with the key returns it without reserving again.
    let again = store.enqueue(keyed()).await.unwrap();
    assert_eq!((again.id, again.created), (enqueued.id, false));
    assert_eq!(balance(&store, ada).await.reserved, 2);
    assert_ledger_agrees(&store, ada).await;
}

async fn concurrent_enqueues_never_overdraw(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    store.grant_credits(ada, 10, "test").await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(costing(ada, 1)).await })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(StoreError::InsufficientCredits) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((accepted, refused), (10, 40));
    assert_eq!(
        balance(&store, ada).await,
        CreditBalance {
            balance: 0,
            reserved: 10
        }
    );
    assert_ledger_agrees(&store, ada).await;
}

async fn a_retried_job_is_charged_once(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    store.grant_credits(ada, 3, "test").await.unwrap();
    store.enqueue(costing(ada, 3)).await.unwrap();

    // Attempt 1 fails transiently, attempt 2 is lost and rescued, attempt
    // 3 succeeds; the stale leases of 1 and 2 then try to write too.
    let first = claim_one(&store, LEASE).await;
    let transient = Failure {
        code: "provider_unavailable".into(),
        message: "503".into(),
        retry_in: Some(Duration::ZERO),
    };
    assert!(store.fail(first.lease, transient.clone()).await.unwrap());
    let second = claim_one(&store, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired(3).await.unwrap().len(), 1);
    let third = claim_one(&store, LEASE).await;
    assert_eq!(third.attempt, 3);
    let done = |job: &kiln_store::ClaimedJob| Completion {
        lease: job.lease,
        result: json!({}),
    };
    assert_eq!(store.complete(&[done(&third)]).await.unwrap(), 1);
    assert_eq!(
        store
            .complete(&[done(&first), done(&second)])
            .await
            .unwrap(),
        0
    );
    assert!(!store.fail(second.lease, transient).await.unwrap());

    assert_eq!(
        kinds(&store, ada).await,
        [EntryKind::Grant, EntryKind::Reserve, EntryKind::Charge]
    );
    assert_eq!(balance(&store, ada).await, CreditBalance::default());
    assert_ledger_agrees(&store, ada).await;
}

async fn a_grant_is_given_once_per_reason(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    assert!(store.grant_credits(ada, 50, "signup").await.unwrap());
    assert!(!store.grant_credits(ada, 50, "signup").await.unwrap());
    assert!(!store.grant_credits(ada, 0, "nothing").await.unwrap());
    assert!(store.grant_credits(ada, 5, "apology").await.unwrap());
    assert_eq!(balance(&store, ada).await.balance, 55);
    assert_ledger_agrees(&store, ada).await;
}

fn person(email: &str, code: &str, referred_by: Option<&str>) -> NewUser {
    NewUser {
        identifier: Identifier::Email(email.into()),
        password_hash: "$2b$04$hash".into(),
        birth_date: NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
        referral_code: code.into(),
        referred_by_code: referred_by.map(String::from),
        locale: Default::default(),
    }
}

async fn verify(store: &Store, user: UserId, grants: VerificationGrants) -> CodeCheck {
    store
        .issue_code(NewCode {
            id: Uuid::now_v7(),
            user_id: user,
            code_hash: "right".into(),
            expires_at: Utc::now() + TimeDelta::minutes(10),
            contact: None,
        })
        .await
        .unwrap();
    store.check_code(user, "right", grants).await.unwrap()
}

async fn the_first_verification_grants_signup_and_referral_credits(store: Store, _: &TestDatabase) {
    let grants = VerificationGrants {
        signup: 50,
        referral_bonus: 10,
    };
    let UserCreated::Created(ada) = store
        .create_user(person("ada@example.com", "ADA", None))
        .await
        .unwrap()
    else {
        panic!("ada")
    };
    let UserCreated::Created(bob) = store
        .create_user(person("bob@example.com", "BOB", Some("ADA")))
        .await
        .unwrap()
    else {
        panic!("bob")
    };
    // Nothing before verification.
    assert_eq!(balance(&store, bob).await, CreditBalance::default());

    assert_eq!(verify(&store, ada, grants).await, CodeCheck::Verified);
    assert_eq!(balance(&store, ada).await.balance, 50);
    assert_eq!(verify(&store, bob, grants).await, CodeCheck::Verified);
    assert_eq!(balance(&store, bob).await.balance, 60);
    assert_eq!(
        balance(&store, ada).await.balance,
        60,
        "the referrer's bonus"
    );

    // A later code (say, for a new address) grants nothing again.
    assert_eq!(verify(&store, bob, grants).await, CodeCheck::Verified);
    assert_eq!(balance(&store, bob).await.balance, 60);
    assert_eq!(balance(&store, ada).await.balance, 60);
    for user in [ada, bob] {
        assert_ledger_agrees(&store, user).await;
    }
}

async fn grouped_generations_refuse_only_the_short_owner(store: Store, _: &TestDatabase) {
    use kiln_store::generations::{GenerationEnqueued, GenerationInput, NewGeneration};
    let (ada, bob) = (account(&store).await, account(&store).await);
    store.grant_credits(ada, 5, "test").await.unwrap();
    store.grant_credits(bob, 100, "test").await.unwrap();
    let generation = |owner: UserId, n: usize| NewGeneration {
        owner,
        input: GenerationInput {
            prompt: format!("a lighthouse {n}"),
            model: "dev-image-1".into(),
            width: 1024,
            height: 1024,
            n: 1,
            reference_urls: Vec::new(),
            request_hash: format!("hash-{n}"),
            credits: 1,
            webhook: None,
            then: None,
            traceparent: None,
        },
        idempotency_key: None,
    };
    // Enough at once that groups form (see `group_commit.rs`).
    let tasks: Vec<_> = (0..60)
        .map(|n| {
            let store = store.clone();
            let owner = if n % 2 == 0 { ada } else { bob };
            tokio::spawn(
                async move { (owner, store.create_generation(generation(owner, n)).await) },
            )
        })
        .collect();
    let (mut ada_in, mut ada_refused, mut bob_in) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (owner, Ok(GenerationEnqueued::Created { .. })) if owner == ada => ada_in += 1,
            (owner, Err(StoreError::InsufficientCredits)) if owner == ada => ada_refused += 1,
            (_, Ok(GenerationEnqueued::Created { .. })) => bob_in += 1,
            (owner, other) => panic!("{owner}: unexpected {other:?}"),
        }
    }
    assert_eq!((ada_in, ada_refused, bob_in), (5, 25, 30));
    assert_eq!(balance(&store, ada).await.reserved, 5);
    assert_eq!(balance(&store, bob).await.reserved, 30);
    for user in [ada, bob] {
        assert_ledger_agrees(&store, user).await;
    }
}

async fn entries_page_newest_first(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    for n in 0..5 {
        store
            .grant_credits(ada, n + 1, &format!("grant-{n}"))
            .await
            .unwrap();
    }
    let first = store.credit_entries(ada, None, 2).await.unwrap();
    assert_eq!(first.iter().map(|e| e.amount).collect::<Vec<_>>(), [5, 4]);
    let rest = store
        .credit_entries(ada, Some(first[1].id), 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.amount).collect::<Vec<_>>(), [3, 2, 1]);
    // Another account's entries are not listed.
    let bob = account(&store).await;
    assert!(
        store
            .credit_entries(bob, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
