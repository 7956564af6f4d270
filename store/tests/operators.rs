//! What operators do to queues and jobs, on both databases: pause and
//! concurrency limits as the claim path obeys them, retry, discard and
//! cancel by filter in batches (credits refunded as an owner's cancel
//! refunds them), the job list's filters and pages, and the overview's
//! counts and throughput windows.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use kiln_jobs::{Probe, RetentionPurge};
use kiln_store::{
    Completion, Failure, JobState, NewJob, Store,
    operators::{BATCH, JobFilter},
    testing::{TestDatabase, account},
};
use serde_json::json;

kiln_store::both_databases!(
    a_concurrency_limit_caps_running_jobs_and_clears_at_run_time,
    a_limit_holds_across_concurrent_claims,
    a_paused_limited_queue_is_not_claimed,
    bulk_actions_cover_more_than_one_batch,
    discard_and_cancel_refund_reserved_credits,
    retry_brings_a_dead_job_back_with_its_history,
    cancel_tells_running_jobs_and_ends_waiting_ones,
    the_job_list_filters_and_pages,
    the_overview_counts_states_and_recent_throughput,
    a_bulk_retry_brings_back_one_export_per_account_and_goes_on,
);

const LEASE: Duration = Duration::from_secs(30);

fn probe() -> NewJob {
    NewJob::of(&Probe::default()).unwrap()
}

fn default_queue() -> Vec<String> {
    vec!["default".to_owned()]
}

async fn claim(store: &Store, n: u32) -> Vec<kiln_store::ClaimedJob> {
    store.claim("w", &default_queue(), n, LEASE).await.unwrap()
}

async fn state(store: &Store, id: uuid::Uuid) -> JobState {
    store.get(id).await.unwrap().unwrap().state
}

fn queue(name: &str) -> JobFilter {
    JobFilter {
        queue: Some(name.to_owned()),
        ..JobFilter::default()
    }
}

async fn a_concurrency_limit_caps_running_jobs_and_clears_at_run_time(
    store: Store,
    _: &TestDatabase,
) {
    for _ in 0..5 {
        store.enqueue(probe()).await.unwrap();
    }
    store
        .set_concurrency_limit("default", Some(2))
        .await
        .unwrap();
    let first = claim(&store, 10).await;
    assert_eq!(first.len(), 2, "the limit caps one claim");
    assert!(claim(&store, 10).await.is_empty(), "and the next");

    // One ends: one slot frees.
    let done = Completion {
        lease: first[0].lease,
        result: json!({}),
    };
    assert_eq!(store.complete(&[done]).await.unwrap(), 1);
    assert_eq!(claim(&store, 10).await.len(), 1);

    // Cleared: the rest run, no restart.
    store.set_concurrency_limit("default", None).await.unwrap();
    assert_eq!(claim(&store, 10).await.len(), 2);
    let settings = store.queue_settings().await.unwrap();
    assert_eq!(settings.len(), 1);
    assert_eq!(settings[0].concurrency_limit, None);
}

async fn a_limit_holds_across_concurrent_claims(store: Store, db: &TestDatabase) {
    for _ in 0..40 {
        store.enqueue(probe()).await.unwrap();
    }
    store
        .set_concurrency_limit("default", Some(3))
        .await
        .unwrap();
    // Another process's store, where there is one (Postgres), as well.
    let other = if db.is_postgres() {
        db.store().await.unwrap()
    } else {
        store.clone()
    };
    let mut claims = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        claims.push(tokio::spawn(async move {
            s.claim(&format!("w{i}"), &default_queue(), 5, LEASE)
                .await
                .unwrap()
                .len()
        }));
    }
    let mut total = 0;
    for c in claims {
        total += c.await.unwrap();
    }
    assert_eq!(
        total, 3,
        "eight concurrent claims took {total} with a limit of 3"
    );
}

async fn a_paused_limited_queue_is_not_claimed(store: Store, _: &TestDatabase) {
    store.enqueue(probe()).await.unwrap();
    store
        .set_concurrency_limit("default", Some(5))
        .await
        .unwrap();
    store.pause_queue("default").await.unwrap();
    assert!(claim(&store, 5).await.is_empty());
    store.resume_queue("default").await.unwrap();
    assert_eq!(claim(&store, 5).await.len(), 1);
}

async fn bulk_actions_cover_more_than_one_batch(store: Store, _: &TestDatabase) {
    let n = BATCH as usize * 2 + 500;
    let ids = store.enqueue_many(vec![probe(); n]).await.unwrap();
    // Another queue's job is not touched by a filter on `default`.
    let other = store
        .enqueue(NewJob::of(&RetentionPurge {}).unwrap())
        .await
        .unwrap()
        .id;

    assert_eq!(
        store.discard_jobs(&queue("default")).await.unwrap(),
        n as u64
    );
    assert_eq!(state(&store, ids[0]).await, JobState::Failed);
    assert_eq!(state(&store, ids[n - 1]).await, JobState::Failed);
    assert_eq!(state(&store, other).await, JobState::Available);
    let failed = JobFilter {
        state: Some(JobState::Failed),
        ..queue("default")
    };
    assert_eq!(store.retry_jobs(&failed).await.unwrap(), n as u64);
    assert_eq!(state(&store, ids[n / 2]).await, JobState::Available);
    assert_eq!(
        store.cancel_jobs(&queue("default")).await.unwrap(),
        (n as u64, 0)
    );
    assert_eq!(state(&store, ids[n - 1]).await, JobState::Cancelled);
    // Nothing is left to act on.
    assert_eq!(store.discard_jobs(&queue("default")).await.unwrap(), 0);
}

async fn discard_and_cancel_refund_reserved_credits(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    store.grant_credits(ada, 10, "test").await.unwrap();
    let a = store
        .enqueue(probe().owner(ada).reserving(3))
        .await
        .unwrap()
        .id;
    let b = store
        .enqueue(probe().owner(ada).reserving(4))
        .await
        .unwrap()
        .id;
    let held = store.credit_balance(ada).await.unwrap();
    assert_eq!((held.balance, held.reserved), (3, 7));

    assert_eq!(store.discard_jobs(&JobFilter::job(a)).await.unwrap(), 1);
    assert_eq!(store.cancel_jobs(&JobFilter::job(b)).await.unwrap(), (1, 0));
    let back = store.credit_balance(ada).await.unwrap();
    assert_eq!((back.balance, back.reserved), (10, 0));
    let discarded = store.get(a).await.unwrap().unwrap();
    assert_eq!(discarded.state, JobState::Failed);
    assert_eq!(discarded.errors.last().unwrap().code, "discarded");
    assert_eq!(state(&store, b).await, JobState::Cancelled);

    // An operator's retry runs free: nothing reserved, nothing charged.
    assert_eq!(store.retry_jobs(&JobFilter::job(a)).await.unwrap(), 1);
    let after = store.credit_balance(ada).await.unwrap();
    assert_eq!((after.balance, after.reserved), (10, 0));
    let job = claim(&store, 1).await.remove(0);
    assert_eq!(job.lease.id, a);
    let done = Completion {
        lease: job.lease,
        result: json!({}),
    };
    store.complete(&[done]).await.unwrap();
    let settled = store.credit_balance(ada).await.unwrap();
    assert_eq!((settled.balance, settled.reserved), (10, 0));
}

async fn retry_brings_a_dead_job_back_with_its_history(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe().max_attempts(1)).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    let failure = Failure {
        code: "boom".into(),
        message: "it broke".into(),
        retry_in: None,
    };
    assert!(store.fail(job.lease, failure).await.unwrap());
    assert_eq!(state(&store, id).await, JobState::Failed);
    // A succeeded job is not retried.
    let ok = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    store
        .complete(&[Completion {
            lease: job.lease,
            result: json!({}),
        }])
        .await
        .unwrap();

    assert_eq!(store.retry_jobs(&JobFilter::job(ok)).await.unwrap(), 0);
    let mut events = store.subscribe();
    assert_eq!(store.retry_jobs(&JobFilter::job(id)).await.unwrap(), 1);
    // Idle workers of its queue are woken.
    let woken = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(kiln_store::StoreEvent::JobsAvailable(Some(q))) = events.recv().await
                && q == "default"
            {
                return;
            }
        }
    })
    .await;
    assert!(
        woken.is_ok(),
        "no JobsAvailable for the retried job's queue"
    );
    let back = store.get(id).await.unwrap().unwrap();
    assert_eq!(back.state, JobState::Available);
    assert_eq!(back.errors.len(), 1, "the history is kept");
    assert_eq!(back.max_attempts, 2, "one more attempt than it used");
    let again = claim(&store, 1).await.remove(0);
    assert_eq!((again.lease.id, again.attempt), (id, 2));
}

async fn cancel_tells_running_jobs_and_ends_waiting_ones(store: Store, _: &TestDatabase) {
    let mut events = store.subscribe();
    let running = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    let waiting = store.enqueue(probe()).await.unwrap().id;
    assert_eq!(store.cancel_jobs(&queue("default")).await.unwrap(), (1, 1));
    assert_eq!(state(&store, waiting).await, JobState::Cancelled);
    let rec = store.get(running).await.unwrap().unwrap();
    assert!(rec.cancel_requested);
    // Its worker hears of it (the heartbeat would return it too).
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(kiln_store::StoreEvent::CancelRequested(id)) = events.recv().await
                && id == running
            {
                return;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "no CancelRequested for the running job");
    assert!(
        store
            .finish_cancelled(job.lease, "cancelled")
            .await
            .unwrap()
    );
}

async fn the_job_list_filters_and_pages(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    let mut adas = Vec::new();
    for _ in 0..5 {
        adas.push(store.enqueue(probe().owner(ada)).await.unwrap().id);
    }
    let purge = store
        .enqueue(NewJob::of(&RetentionPurge {}).unwrap())
        .await
        .unwrap()
        .id;
    // One of Ada's is dead.
    store.discard_jobs(&JobFilter::job(adas[1])).await.unwrap();

    let by_owner = JobFilter {
        owner: Some(ada),
        ..JobFilter::default()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.operator_jobs(&by_owner, before, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = page.last().map(|j| j.id);
        seen.extend(page.into_iter().map(|j| j.id));
    }
    let mut newest_first = adas.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "both tables, newest first, each once");

    let dead = JobFilter {
        state: Some(JobState::Failed),
        ..JobFilter::default()
    };
    let ids: Vec<_> = store
        .operator_jobs(&dead, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec![adas[1]]);
    let kind = JobFilter {
        kind: Some("retention_purge".into()),
        queue: Some("maintenance".into()),
        ..JobFilter::default()
    };
    let ids: Vec<_> = store
        .operator_jobs(&kind, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec![purge]);
}

async fn the_overview_counts_states_and_recent_throughput(store: Store, db: &TestDatabase) {
    let ids = store.enqueue_many(vec![probe(); 6]).await.unwrap();
    let scheduled = probe().run_at(chrono::Utc::now() + chrono::TimeDelta::hours(1));
    store.enqueue(scheduled).await.unwrap();
    let jobs = claim(&store, 3).await;
    let done: Vec<Completion> = jobs[..2]
        .iter()
        .map(|j| Completion {
            lease: j.lease,
            result: json!({}),
        })
        .collect();
    store.complete(&done).await.unwrap();
    store.discard_jobs(&JobFilter::job(ids[5])).await.unwrap();
    // One success ended 10 minutes ago, and one two hours ago (outside
    // every window).
    age_finished(db, jobs[0].lease.id, 10).await;
    let old = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 3).await;
    let old_lease = job.iter().find(|j| j.lease.id == old).unwrap().lease;
    store
        .complete(&[Completion {
            lease: old_lease,
            result: json!({}),
        }])
        .await
        .unwrap();
    age_finished(db, old, 120).await;
    // That claim took every due job; one more waits.
    store.enqueue(probe()).await.unwrap();
    store
        .set_concurrency_limit("default", Some(9))
        .await
        .unwrap();
    store.pause_queue("default").await.unwrap();

    let overview = store.queue_overview().await.unwrap();
    let names: Vec<&str> = overview.iter().map(|q| q.queue.as_str()).collect();
    for q in kiln_jobs::catalogue::queues() {
        assert!(names.contains(&q), "{q} missing from {names:?}");
    }
    let d = overview.iter().find(|q| q.queue == "default").unwrap();
    let count = |s: JobState| d.counts[&s];
    assert_eq!(count(JobState::Available), 1, "{d:?}");
    assert_eq!(count(JobState::Running), 3, "{d:?}");
    assert_eq!(count(JobState::Retryable), 0, "{d:?}");
    assert_eq!(count(JobState::Scheduled), 1, "{d:?}");
    assert_eq!(count(JobState::Failed), 1, "{d:?}");
    assert!(d.paused);
    assert_eq!(d.concurrency_limit, Some(9));
    assert!(d.oldest_due_age.is_some());
    let ended = |w: usize, s: JobState| d.finished[w][&s];
    assert_eq!(
        [
            ended(0, JobState::Succeeded),
            ended(1, JobState::Succeeded),
            ended(2, JobState::Succeeded)
        ],
        [1, 1, 2],
        "{d:?}"
    );
    assert_eq!(ended(0, JobState::Failed), 1);
    let m = overview.iter().find(|q| q.queue == "maintenance").unwrap();
    assert_eq!(m.counts[&JobState::Available], 0);
    assert!(!m.paused);
}

/// Moves a finished job's end `minutes` into the past.
async fn age_finished(db: &TestDatabase, id: uuid::Uuid, minutes: i64) {
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query(
            "UPDATE finished_jobs SET finished_at = finished_at - make_interval(mins => $2)
             WHERE id = $1",
        )
        .bind(id)
        .bind(minutes as i32)
        .execute(&pool)
        .await
        .unwrap();
    } else {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE finished_jobs SET finished_at = finished_at - ?2 WHERE id = ?1")
            .bind(id.to_string())
            .bind(minutes * 60_000)
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// An export of `owner`'s that failed for good.
async fn failed_export(store: &Store, owner: kiln_jobs::UserId) -> uuid::Uuid {
    let job = NewJob::of(&kiln_jobs::DataExport { user: owner })
        .unwrap()
        .owner(owner)
        .max_attempts(1);
    let id = store.enqueue(job).await.unwrap().id;
    let claimed = store
        .claim("w", &["exports".to_owned()], 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.lease.id, id);
    let failure = Failure {
        code: "boom".into(),
        message: "storage was down".into(),
        retry_in: None,
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());
    id
}

async fn a_bulk_retry_brings_back_one_export_per_account_and_goes_on(
    store: Store,
    _: &TestDatabase,
) {
    // Ada: two failed exports; Bob: one failed and one waiting; a probe.
    let (ada, bob) = (account(&store).await, account(&store).await);
    let ada_older = failed_export(&store, ada).await;
    let ada_newer = failed_export(&store, ada).await;
    let _bob_failed = failed_export(&store, bob).await;
    let bob_waiting = NewJob::of(&kiln_jobs::DataExport { user: bob })
        .unwrap()
        .owner(bob);
    store.enqueue(bob_waiting).await.unwrap();
    let probe_id = store.enqueue(probe().max_attempts(1)).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    let failure = Failure {
        code: "boom".into(),
        message: "it broke".into(),
        retry_in: None,
    };
    assert!(store.fail(job.lease, failure).await.unwrap());

    // One export at a time per account: Ada's newest comes back, Bob's
    // waits behind the one he has; the rest of the filter goes on.
    let failed = JobFilter {
        state: Some(JobState::Failed),
        ..JobFilter::default()
    };
    assert_eq!(store.retry_jobs(&failed).await.unwrap(), 2);
    assert_eq!(state(&store, ada_newer).await, JobState::Available);
    assert_eq!(state(&store, ada_older).await, JobState::Failed);
    assert_eq!(state(&store, probe_id).await, JobState::Available);
    // Again: nothing more can come back now.
    assert_eq!(store.retry_jobs(&failed).await.unwrap(), 0);
}
