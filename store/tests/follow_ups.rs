//! Follow-up jobs on both databases: enqueued in the transaction that
//! records their parent's success (never for a stale lease, a failure or a
//! parent cancelled while it ran), as its children for its owner; the
//! credits reserved up front move from the parent to the children in that
//! transaction, and the ledger adds up.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use kiln_jobs::{Job, Probe, UserId};
use kiln_store::{
    CancelOutcome, ClaimedJob, Completion, Failure, JobState, NewJob, Store,
    credits::{CreditBalance, EntryKind},
    testing::{TestDatabase, account},
};

kiln_store::both_databases!(
    a_success_enqueues_its_children_and_hands_them_its_reservation,
    a_stale_lease_enqueues_nothing,
    a_failed_parent_enqueues_none_and_refunds_everything,
    a_parent_cancelled_while_running_enqueues_none,
    cancelling_a_parent_cancels_its_children,
);

const LEASE: Duration = Duration::from_secs(30);

/// A parent costing 2, reserving 3 for each of up to 2 follow-ups.
fn parent(owner: UserId) -> NewJob {
    NewJob::of(&Probe::default())
        .unwrap()
        .owner(owner)
        .reserving(2)
        .reserving_for_follow_ups(6)
}

/// A follow-up costing 3, on its own queue so claims of the parent's do not
/// take it.
fn child(n: u64) -> NewJob {
    NewJob::of(&Probe {
        sleep_ms: n,
        ..Probe::default()
    })
    .unwrap()
    .queue("children")
    .reserving(3)
}

async fn claim(store: &Store, queue: &str) -> ClaimedJob {
    store
        .claim("worker", &[queue.to_owned()], 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap()
}

fn done(claimed: &ClaimedJob) -> Completion {
    Completion {
        lease: claimed.lease,
        result: serde_json::json!({}),
    }
}

async fn funded(store: &Store, credits: u32) -> UserId {
    let owner = account(store).await;
    assert!(store.grant_credits(owner, credits, "test").await.unwrap());
    owner
}

async fn balance(store: &Store, owner: UserId) -> CreditBalance {
    let stored = store.credit_balance(owner).await.unwrap();
    let entries = store.credit_entries(owner, None, 1000).await.unwrap();
    assert_eq!(CreditBalance::of_entries(&entries), stored, "{entries:?}");
    stored
}

async fn a_success_enqueues_its_children_and_hands_them_its_reservation(
    store: Store,
    _: &TestDatabase,
) {
    let owner = funded(&store, 20).await;
    let id = store.enqueue(parent(owner)).await.unwrap().id;
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 12,
            reserved: 8
        }
    );
    let claimed = claim(&store, Probe::QUEUE).await;
    let children = store
        .complete_then(&done(&claimed), vec![child(1), child(2)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(children.len(), 2);
    // Charged 2; the 6 handed back and taken again by the two children.
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 12,
            reserved: 6
        }
    );
    let entries = store.credit_entries(owner, None, 100).await.unwrap();
    let of = |job, kind| {
        entries
            .iter()
            .filter(|e| e.job_id == Some(job) && e.kind == kind)
            .map(|e| e.amount)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(id, EntryKind::Charge), vec![2]);
    assert_eq!(of(id, EntryKind::Refund), vec![6]);
    for child in &children {
        assert_eq!(of(*child, EntryKind::Reserve), vec![3]);
        let job = store.get(*child).await.unwrap().unwrap();
        assert_eq!(job.parent_id, Some(id));
        assert_eq!(job.owner, Some(owner));
        assert_eq!(job.state, JobState::Available);
    }
    let listed: Vec<_> = store
        .children_of(&[id])
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, children);
    assert_eq!(store.get(id).await.unwrap().unwrap().parent_id, None);

    // The children run and are charged as any job.
    for _ in 0..2 {
        let c = claim(&store, "children").await;
        assert_eq!(store.complete(&[done(&c)]).await.unwrap(), 1);
    }
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 12,
            reserved: 0
        }
    );
}

async fn a_stale_lease_enqueues_nothing(store: Store, _: &TestDatabase) {
    let owner = funded(&store, 20).await;
    let id = store.enqueue(parent(owner)).await.unwrap().id;
    let claimed = claim(&store, Probe::QUEUE).await;
    let first = store
        .complete_then(&done(&claimed), vec![child(1)])
        .await
        .unwrap();
    assert_eq!(first.map(|c| c.len()), Some(1));
    // The same success written again (a retried write): nothing more.
    let again = store
        .complete_then(&done(&claimed), vec![child(1)])
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(store.children_of(&[id]).await.unwrap().len(), 1);
    // One child of the two reserved for: the other's share went back.
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 15,
            reserved: 3
        }
    );
}

async fn a_failed_parent_enqueues_none_and_refunds_everything(store: Store, _: &TestDatabase) {
    let owner = funded(&store, 20).await;
    let id = store
        .enqueue(parent(owner).max_attempts(1))
        .await
        .unwrap()
        .id;
    let claimed = claim(&store, Probe::QUEUE).await;
    let failure = Failure {
        code: "broken".into(),
        message: "for good".into(),
        retry_in: None,
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());
    assert!(store.children_of(&[id]).await.unwrap().is_empty());
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 20,
            reserved: 0
        }
    );
}

async fn a_parent_cancelled_while_running_enqueues_none(store: Store, _: &TestDatabase) {
    let owner = funded(&store, 20).await;
    let id = store.enqueue(parent(owner)).await.unwrap().id;
    let claimed = claim(&store, Probe::QUEUE).await;
    assert_eq!(
        store.cancel(id, Some(owner)).await.unwrap(),
        CancelOutcome::Cancelling
    );
    // Its handler finished anyway, before it heard.
    let children = store
        .complete_then(&done(&claimed), vec![child(1), child(2)])
        .await
        .unwrap();
    assert_eq!(children, Some(Vec::new()));
    assert!(store.children_of(&[id]).await.unwrap().is_empty());
    // Its own price charged, the follow-ups' handed back.
    assert_eq!(
        balance(&store, owner).await,
        CreditBalance {
            balance: 18,
            reserved: 0
        }
    );
}

async fn cancelling_a_parent_cancels_its_children(store: Store, _: &TestDatabase) {
    let owner = funded(&store, 20).await;
    let id = store.enqueue(parent(owner)).await.unwrap().id;
    let claimed = claim(&store, Probe::QUEUE).await;
    let children = store
        .complete_then(&done(&claimed), vec![child(1), child(2)])
        .await
        .unwrap()
        .unwrap();
    // One child runs, one waits.
    let running = claim(&store, "children").await;
    assert_eq!(store.cancel_children(id, Some(owner)).await.unwrap(), 2);
    let states: Vec<(bool, JobState, bool)> = {
        let mut jobs = store.children_of(&[id]).await.unwrap();
        jobs.sort_by_key(|j| j.id);
        jobs.into_iter()
            .map(|j| (j.id == running.lease.id, j.state, j.cancel_requested))
            .collect()
    };
    assert_eq!(children.len(), 2);
    assert!(
        states.contains(&(true, JobState::Running, true)),
        "{states:?}"
    );
    assert!(
        states.contains(&(false, JobState::Cancelled, true)),
        "{states:?}"
    );
    // Another account's cancel reaches none of them.
    let other = account(&store).await;
    assert_eq!(store.cancel_children(id, Some(other)).await.unwrap(), 0);
}
