//! The register of data-subject requests, on PostgreSQL and SQLite: due in
//! 30 days, answered by kind or by the job that answers them, overdue
//! ones listed and counted, access requests once a day, and an erased
//! account's requests answered and detached.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{TimeDelta, Utc};
use kiln_store::{
    Store,
    subject_requests::{NewRequest, RequestKind},
    testing::{self, TestDatabase},
};
use uuid::Uuid;

kiln_store::both_databases!(
    requests_are_due_in_30_days_and_overdue_after,
    an_access_request_is_recorded_once_a_day,
    a_job_s_request_is_recorded_once,
    an_erased_account_s_requests_are_answered_and_detached,
);

fn request(user: kiln_jobs::UserId, kind: RequestKind, job_id: Option<Uuid>) -> NewRequest {
    NewRequest {
        user,
        kind,
        job_id,
        answered: false,
    }
}

async fn requests_are_due_in_30_days_and_overdue_after(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    let job = Uuid::now_v7();
    let export = store
        .record_request(request(user, RequestKind::Export, Some(job)))
        .await
        .unwrap()
        .unwrap();
    store
        .record_request(request(user, RequestKind::Correction, None))
        .await
        .unwrap()
        .unwrap();
    store
        .record_request(NewRequest {
            answered: true,
            ..request(user, RequestKind::Restriction, None)
        })
        .await
        .unwrap()
        .unwrap();
    let all = store.subject_requests(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    let first = all.iter().find(|r| r.id == export).unwrap();
    assert_eq!(first.due_at - first.requested_at, TimeDelta::days(30));
    assert_eq!(first.user, Some(user));

    // A day before the due date nothing is overdue; a day after, the two
    // open requests are.
    let now = Utc::now();
    assert_eq!(
        store
            .overdue_requests(now + TimeDelta::days(29))
            .await
            .unwrap(),
        0
    );
    let late = now + TimeDelta::days(31);
    assert_eq!(store.overdue_requests(late).await.unwrap(), 2);
    let overdue = store.subject_requests(Some(late), None, 10).await.unwrap();
    let mut kinds: Vec<_> = overdue.iter().map(|r| r.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["correction", "export"]);
    assert!(overdue.iter().all(|r| r.is_overdue(late)));

    // The export job answers its request; the correction by its kind.
    assert_eq!(store.answer_requests_of_job(job).await.unwrap(), 1);
    assert_eq!(store.overdue_requests(late).await.unwrap(), 1);
    assert_eq!(
        store
            .answer_requests(user, RequestKind::Correction)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.overdue_requests(late).await.unwrap(), 0);

    // Paging, newest first.
    let page = store.subject_requests(None, None, 2).await.unwrap();
    let rest = store
        .subject_requests(None, Some(page[1].id), 2)
        .await
        .unwrap();
    assert_eq!(page.len() + rest.len(), 3);
    assert!(page[0].id > page[1].id && page[1].id > rest[0].id);
}

async fn an_access_request_is_recorded_once_a_day(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    let access = NewRequest {
        answered: true,
        ..request(user, RequestKind::Access, None)
    };
    assert!(store.record_request(access).await.unwrap().is_some());
    assert!(store.record_request(access).await.unwrap().is_none());
    // Another account's is its own.
    let other = testing::account(&store).await;
    let theirs = NewRequest {
        user: other,
        ..access
    };
    assert!(store.record_request(theirs).await.unwrap().is_some());
}

async fn a_job_s_request_is_recorded_once(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    let job = Some(Uuid::now_v7());
    let export = request(user, RequestKind::Export, job);
    assert!(store.record_request(export).await.unwrap().is_some());
    assert!(store.record_request(export).await.unwrap().is_none());
    let answered = NewRequest {
        answered: true,
        ..export
    };
    assert!(store.record_request(answered).await.unwrap().is_none());
    // Another job's is its own, and requests without a job stand apart.
    let next = request(user, RequestKind::Export, Some(Uuid::now_v7()));
    assert!(store.record_request(next).await.unwrap().is_some());
    let correction = request(user, RequestKind::Correction, None);
    assert!(store.record_request(correction).await.unwrap().is_some());
    assert!(store.record_request(correction).await.unwrap().is_some());
    assert_eq!(
        store.subject_requests(None, None, 10).await.unwrap().len(),
        4
    );
}

async fn an_erased_account_s_requests_are_answered_and_detached(store: Store, _: &TestDatabase) {
    let user = testing::account(&store).await;
    store
        .record_request(request(user, RequestKind::Export, None))
        .await
        .unwrap();
    store.delete_account(user).await.unwrap().unwrap();
    // The deletion is registered with the request, open until erased.
    let open: Vec<_> = store
        .subject_requests(Some(Utc::now() + TimeDelta::days(31)), None, 10)
        .await
        .unwrap();
    let mut kinds: Vec<_> = open.iter().map(|r| r.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["deletion", "export"]);
    assert!(store.erase_account_rows(user).await.unwrap());
    let all = store.subject_requests(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|r| r.user.is_none() && r.completed_at.is_some()),
        "{all:?}"
    );
}
