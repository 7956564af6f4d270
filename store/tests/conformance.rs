//! The queue semantics, one test each, run against both PostgreSQL and
//! SQLite: every `Queue` implementation must pass all of them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use chrono::Utc;
use kiln_jobs::{Job, Probe, RetentionPurge, UserId};
use kiln_store::{
    CancelOutcome, Completion, Failure, JobState, NewJob, Store, StoreEvent, testing::TestDatabase,
};
use serde_json::json;

kiln_store::both_databases!(
    bulk_enqueued_jobs_read_back_as_given,
    an_owners_jobs_run_in_the_order_they_came,
    claim_order_follows_priority_then_age,
    one_claim_serves_several_queues_in_priority_order,
    scheduled_jobs_wait_for_run_at,
    claim_spends_an_attempt_and_takes_a_lease,
    stale_fencing_token_cannot_complete_or_update,
    transient_failure_retries_with_history,
    permanent_failure_fails_at_once,
    last_attempt_failure_is_final,
    idempotent_enqueue_gives_one_job,
    idempotency_is_per_owner_and_kind,
    bulk_enqueue_honours_idempotency,
    one_owners_burst_does_not_starve_another,
    cancel_waiting_job_is_immediate,
    cancel_running_job_tells_its_worker,
    cancel_finished_or_foreign_job_is_refused,
    paused_queue_is_not_claimed_until_resumed,
    release_hands_back_without_spending_an_attempt,
    snooze_waits_without_spending_an_attempt,
    expired_lease_is_rescued_for_retry,
    crash_loop_cap_fails_the_job,
    progress_and_stage_are_recorded,
    prune_deletes_only_old_finished_jobs,
    queue_stats_count_by_state,
    enqueue_wakes_subscribers,
    transactional_enqueue_commits_and_rolls_back_with_the_caller,
);

// Owners are accounts; any id will do for the queue.
const ALICE: UserId = UserId(uuid::Uuid::from_u128(1));
const BOB: UserId = UserId(uuid::Uuid::from_u128(2));
const MALLORY: UserId = UserId(uuid::Uuid::from_u128(3));
const OWNER_A: UserId = UserId(uuid::Uuid::from_u128(4));
const OWNER_B: UserId = UserId(uuid::Uuid::from_u128(5));
const LEASE: Duration = Duration::from_secs(30);

fn probe() -> NewJob {
    NewJob::of(&Probe::default()).unwrap()
}

async fn claim(store: &Store, n: u32) -> Vec<kiln_store::ClaimedJob> {
    store
        .claim("test-worker", &["default".to_owned()], n, LEASE)
        .await
        .unwrap()
}

async fn state(store: &Store, id: uuid::Uuid) -> JobState {
    store.get(id).await.unwrap().unwrap().state
}

async fn claim_order_follows_priority_then_age(store: Store, _: &TestDatabase) {
    let low = store.enqueue(probe()).await.unwrap().id;
    let high = store.enqueue(probe().priority(5)).await.unwrap().id;
    let low2 = store.enqueue(probe()).await.unwrap().id;
    let ids: Vec<_> = claim(&store, 3).await.iter().map(|j| j.lease.id).collect();
    assert_eq!(ids, vec![high, low, low2]);
}

async fn one_claim_serves_several_queues_in_priority_order(store: Store, _: &TestDatabase) {
    let routine = store.enqueue(probe()).await.unwrap().id;
    let urgent = store
        .enqueue(NewJob::of(&RetentionPurge {}).unwrap().priority(5))
        .await
        .unwrap()
        .id;
    let queues = ["default".to_owned(), "maintenance".to_owned()];
    let first = store.claim("w", &queues, 1, LEASE).await.unwrap();
    assert_eq!(first[0].lease.id, urgent);
    let second = store.claim("w", &queues, 5, LEASE).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].lease.id, routine);
}

async fn scheduled_jobs_wait_for_run_at(store: Store, _: &TestDatabase) {
    let at = Utc::now() + chrono::Duration::milliseconds(400);
    let id = store.enqueue(probe().run_at(at)).await.unwrap().id;
    assert_eq!(state(&store, id).await, JobState::Scheduled);
    assert!(claim(&store, 1).await.is_empty(), "claimed before run_at");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = claim(&store, 1).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.id, id);
}

async fn claim_spends_an_attempt_and_takes_a_lease(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.max_attempts, Probe::MAX_ATTEMPTS);
    assert_eq!(job.kind, "probe");
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.lease_owner.as_deref(), Some("test-worker"));
    assert!(rec.lease_expires_at.unwrap() > Utc::now() + chrono::Duration::seconds(20));
    assert_eq!(rec.token, job.lease.token);
    assert!(
        claim(&store, 1).await.is_empty(),
        "a running job was claimed twice"
    );
}

async fn stale_fencing_token_cannot_complete_or_update(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let first = store
        .claim(
            "worker-a",
            &["default".to_owned()],
            1,
            Duration::from_millis(1),
        )
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = store.rescue_expired(3).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, JobState::Retryable);
    // Probe's backoff after attempt 1 is at most 200 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = store
        .claim("worker-b", &["default".to_owned()], 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.lease.id, id);
    assert!(second.lease.token > first.lease.token);

    let stale = first.lease;
    let done = [Completion {
        lease: stale,
        result: json!({"by": "a"}),
    }];
    assert_eq!(store.complete(&done).await.unwrap(), 0);
    assert!(!store.set_progress(stale, Some("x"), 50).await.unwrap());
    let failure = Failure {
        code: "x".into(),
        message: "x".into(),
        retry_in: None,
    };
    assert!(!store.fail(stale, failure).await.unwrap());
    assert!(!store.finish_cancelled(stale, "x").await.unwrap());
    assert_eq!(store.release(&[stale]).await.unwrap(), 0);
    assert_eq!(store.heartbeat(&[stale], LEASE).await.unwrap(), vec![stale]);

    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(rec.progress, 0);

    let done = [Completion {
        lease: second.lease,
        result: json!({"by": "b"}),
    }];
    assert_eq!(store.complete(&done).await.unwrap(), 1);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.result, Some(json!({"by": "b"})));
}

async fn transient_failure_retries_with_history(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    let failure = Failure {
        code: "upstream_503".into(),
        message: "provider unavailable".into(),
        retry_in: Some(Duration::from_secs(60)),
    };
    assert!(store.fail(job.lease, failure).await.unwrap());
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Retryable);
    assert!(rec.run_at > Utc::now() + chrono::Duration::seconds(50));
    assert!(rec.finished_at.is_none());
    assert_eq!(rec.errors.len(), 1);
    assert_eq!(rec.errors[0].attempt, 1);
    assert_eq!(rec.errors[0].code, "upstream_503");
    assert_eq!(rec.errors[0].message, "provider unavailable");
    assert!(!rec.errors[0].permanent);
    assert!(
        claim(&store, 1).await.is_empty(),
        "retried before its backoff"
    );
}

async fn permanent_failure_fails_at_once(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    let failure = Failure {
        code: "content_blocked".into(),
        message: "no".into(),
        retry_in: None,
    };
    assert!(store.fail(job.lease, failure).await.unwrap());
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.attempt, 1);
    assert!(rec.finished_at.is_some());
    assert!(rec.errors[0].permanent);
}

async fn last_attempt_failure_is_final(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe().max_attempts(2)).await.unwrap().id;
    for attempt in 1..=2 {
        let job = claim(&store, 1).await.remove(0);
        assert_eq!(job.attempt, attempt);
        let failure = Failure {
            code: "flaky".into(),
            message: format!("attempt {attempt}"),
            retry_in: Some(Duration::ZERO),
        };
        assert!(store.fail(job.lease, failure).await.unwrap());
    }
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    let messages: Vec<_> = rec.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["attempt 1", "attempt 2"]);
}

async fn idempotent_enqueue_gives_one_job(store: Store, _: &TestDatabase) {
    let first = store
        .enqueue(probe().owner(ALICE).idempotency_key("k1"))
        .await
        .unwrap();
    let second = store
        .enqueue(probe().owner(ALICE).idempotency_key("k1"))
        .await
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    assert_eq!(claim(&store, 10).await.len(), 1);
}

async fn idempotency_is_per_owner_and_kind(store: Store, _: &TestDatabase) {
    let a = store
        .enqueue(probe().owner(ALICE).idempotency_key("k"))
        .await
        .unwrap();
    let b = store
        .enqueue(probe().owner(BOB).idempotency_key("k"))
        .await
        .unwrap();
    let system = store.enqueue(probe().idempotency_key("k")).await.unwrap();
    let other_kind = NewJob::of(&RetentionPurge {})
        .unwrap()
        .owner(ALICE)
        .idempotency_key("k");
    let c = store.enqueue(other_kind).await.unwrap();
    let system_again = store.enqueue(probe().idempotency_key("k")).await.unwrap();
    assert!(a.created && b.created && c.created && system.created);
    assert!(!system_again.created);
    assert_eq!(system.id, system_again.id);
    assert_ne!(a.id, b.id);
}

async fn bulk_enqueued_jobs_read_back_as_given(store: Store, _: &TestDatabase) {
    let later = Utc::now() + chrono::Duration::hours(1);
    let payload = Probe {
        sleep_ms: 7,
        ..Default::default()
    };
    let given = vec![
        NewJob::of(&payload).unwrap().owner(ALICE).priority(3),
        NewJob::of(&payload).unwrap().max_attempts(9).run_at(later),
        probe().queue("other").idempotency_key("once"),
    ];
    let ids = store.enqueue_many(given.clone()).await.unwrap();
    assert_eq!(ids.len(), 3);
    for (job, id) in given.iter().zip(&ids) {
        let rec = store.get(*id).await.unwrap().unwrap();
        assert_eq!(
            (&rec.kind, &rec.queue, rec.owner, &rec.payload),
            (&job.kind, &job.queue, job.owner, &job.payload)
        );
        assert_eq!(
            (rec.priority, rec.max_attempts, rec.attempt),
            (job.priority, job.max_attempts, 0)
        );
        let state = if job.run_at.is_some() {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        assert_eq!(rec.state, state, "{job:?}");
    }
    let scheduled = store.get(ids[1]).await.unwrap().unwrap();
    assert!((scheduled.run_at - later).num_milliseconds().abs() <= 1);
}

async fn an_owners_jobs_run_in_the_order_they_came(store: Store, _: &TestDatabase) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.enqueue(probe().owner(ALICE)).await.unwrap().id);
    }
    let first_two = claim(&store, 2).await;
    let done: Vec<Completion> = first_two
        .iter()
        .map(|j| Completion {
            lease: j.lease,
            result: json!({}),
        })
        .collect();
    assert_eq!(store.complete(&done).await.unwrap(), 2);
    // One of Alice's jobs still waits; her next one goes after it.
    ids.push(store.enqueue(probe().owner(ALICE)).await.unwrap().id);
    let rest: Vec<_> = claim(&store, 1)
        .await
        .into_iter()
        .chain(claim(&store, 1).await)
        .map(|j| j.lease.id)
        .collect();
    assert_eq!(rest, ids[2..]);
}

async fn bulk_enqueue_honours_idempotency(store: Store, _: &TestDatabase) {
    store.enqueue(probe().idempotency_key("dup")).await.unwrap();
    let batch = vec![
        probe(),
        probe().idempotency_key("dup"),
        probe().idempotency_key("new"),
    ];
    let ids = store.enqueue_many(batch).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(claim(&store, 10).await.len(), 3);
}

async fn one_owners_burst_does_not_starve_another(store: Store, _: &TestDatabase) {
    let burst: Vec<_> = (0..1000).map(|_| probe().owner(OWNER_A)).collect();
    assert_eq!(store.enqueue_many(burst).await.unwrap().len(), 1000);
    let single = store.enqueue(probe().owner(OWNER_B)).await.unwrap().id;
    // A worker claiming 5 at a time picks owner B's job in its first claim.
    let first_claim: Vec<_> = claim(&store, 5).await.iter().map(|j| j.lease.id).collect();
    assert!(
        first_claim.contains(&single),
        "owner B waited behind owner A's burst"
    );
}

async fn cancel_waiting_job_is_immediate(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe().owner(ALICE)).await.unwrap().id;
    assert_eq!(
        store.cancel(id, Some(ALICE)).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    assert!(rec.finished_at.is_some());
    assert!(claim(&store, 1).await.is_empty());
}

async fn cancel_running_job_tells_its_worker(store: Store, _: &TestDatabase) {
    let mut events = store.subscribe();
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    assert_eq!(
        store.cancel(id, None).await.unwrap(),
        CancelOutcome::Cancelling
    );
    assert_eq!(state(&store, id).await, JobState::Running);
    // Told at once by an event, and again by the next heartbeat.
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(StoreEvent::CancelRequested(c)) = events.recv().await
                && c == id
            {
                return;
            }
        }
    })
    .await;
    assert!(told.is_ok(), "no cancellation event");
    assert_eq!(
        store.heartbeat(&[job.lease], LEASE).await.unwrap(),
        vec![job.lease]
    );
    assert!(store.finish_cancelled(job.lease, "stopped").await.unwrap());
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!(rec.errors.last().unwrap().code, "cancelled");
}

async fn cancel_finished_or_foreign_job_is_refused(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe().owner(ALICE)).await.unwrap().id;
    assert_eq!(
        store.cancel(id, Some(MALLORY)).await.unwrap(),
        CancelOutcome::NotFound
    );
    let job = claim(&store, 1).await.remove(0);
    store
        .complete(&[Completion {
            lease: job.lease,
            result: json!({}),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.cancel(id, Some(ALICE)).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Succeeded)
    );
    assert_eq!(
        store.cancel(uuid::Uuid::now_v7(), None).await.unwrap(),
        CancelOutcome::NotFound
    );
}

async fn paused_queue_is_not_claimed_until_resumed(store: Store, _: &TestDatabase) {
    store.pause_queue("default").await.unwrap();
    store.enqueue(probe()).await.unwrap();
    assert!(claim(&store, 1).await.is_empty());
    assert_eq!(
        store.paused_queues().await.unwrap(),
        vec!["default".to_owned()]
    );
    let maintenance = NewJob::of(&RetentionPurge {}).unwrap();
    store.enqueue(maintenance).await.unwrap();
    let other = store
        .claim("w", &["maintenance".to_owned()], 1, LEASE)
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "pausing one queue stopped another");
    store.resume_queue("default").await.unwrap();
    assert_eq!(claim(&store, 1).await.len(), 1);
}

async fn release_hands_back_without_spending_an_attempt(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    assert_eq!(store.release(&[job.lease]).await.unwrap(), 1);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Available);
    assert_eq!(rec.attempt, 0);
    assert!(rec.lease_owner.is_none());
    let again = claim(&store, 1).await.remove(0);
    assert_eq!(again.attempt, 1);
}

async fn snooze_waits_without_spending_an_attempt(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    assert!(
        store
            .snooze(job.lease, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    assert_eq!(rec.attempt, 0);
    assert!(claim(&store, 1).await.is_empty());
}

async fn expired_lease_is_rescued_for_retry(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    store
        .claim(
            "doomed",
            &["default".to_owned()],
            1,
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    // A live lease is not rescued.
    let live = store.enqueue(probe()).await.unwrap().id;
    claim(&store, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = store.rescue_expired(3).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].id, id);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Retryable);
    assert_eq!(rec.rescues, 1);
    assert_eq!(rec.errors[0].code, "lease_expired");
    assert!(rec.lease_owner.is_none());
    assert_eq!(state(&store, live).await, JobState::Running);
}

async fn crash_loop_cap_fails_the_job(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe().max_attempts(10)).await.unwrap().id;
    for round in 1..=2 {
        let claimed = loop {
            let c = store
                .claim(
                    "doomed",
                    &["default".to_owned()],
                    1,
                    Duration::from_millis(1),
                )
                .await
                .unwrap();
            if !c.is_empty() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(claimed[0].attempt, round);
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.rescue_expired(2).await.unwrap();
    }
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.errors.last().unwrap().code, "crash_loop");
    assert!(rec.finished_at.is_some());
}

async fn progress_and_stage_are_recorded(store: Store, _: &TestDatabase) {
    let id = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    assert!(
        store
            .set_progress(job.lease, Some("generating"), 40)
            .await
            .unwrap()
    );
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.stage.as_deref(), Some("generating"));
    assert_eq!(rec.progress, 40);
    assert!(store.set_progress(job.lease, None, 250).await.unwrap());
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.stage.as_deref(), Some("generating"));
    assert_eq!(rec.progress, 100);
}

async fn prune_deletes_only_old_finished_jobs(store: Store, _: &TestDatabase) {
    let done = store.enqueue(probe()).await.unwrap().id;
    let job = claim(&store, 1).await.remove(0);
    store
        .complete(&[Completion {
            lease: job.lease,
            result: json!({}),
        }])
        .await
        .unwrap();
    let waiting = store.enqueue(probe()).await.unwrap().id;
    assert_eq!(
        store
            .prune_finished(ago(Duration::from_secs(3600)), 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        store
            .prune_finished(ago(Duration::from_millis(10)), 100)
            .await
            .unwrap(),
        1
    );
    assert!(store.get(done).await.unwrap().is_none());
    assert!(store.get(waiting).await.unwrap().is_some());
}

async fn queue_stats_count_by_state(store: Store, _: &TestDatabase) {
    for _ in 0..3 {
        store.enqueue(probe()).await.unwrap();
    }
    claim(&store, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = store.queue_stats().await.unwrap();
    let count = |state| {
        stats
            .iter()
            .find(|s| s.queue == "default" && s.state == state)
            .map(|s| s.count)
    };
    assert_eq!(count(JobState::Available), Some(2));
    assert_eq!(count(JobState::Running), Some(1));
    let available = stats
        .iter()
        .find(|s| s.state == JobState::Available)
        .unwrap();
    assert!(available.oldest_due_age.unwrap() >= Duration::from_millis(10));
}

async fn enqueue_wakes_subscribers(store: Store, _: &TestDatabase) {
    let mut events = store.subscribe();
    // Postgres: the listener may still be connecting; retry the enqueue.
    let woke = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            store.enqueue(probe()).await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    match events.recv().await {
                        Ok(StoreEvent::JobsAvailable(Some(q))) if q == "default" => return,
                        Ok(_) => {}
                        Err(e) => panic!("event stream broke: {e}"),
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
    assert!(woke.is_ok(), "enqueue sent no wake-up");
}

async fn transactional_enqueue_commits_and_rolls_back_with_the_caller(
    store: Store,
    db: &TestDatabase,
) {
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query("CREATE TABLE orders (id uuid PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let gen_id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO orders (id) VALUES ($1)")
            .bind(gen_id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let rolled_back = kiln_store::PgStore::enqueue_in(&mut tx, probe())
            .await
            .unwrap()
            .id;
        tx.rollback().await.unwrap();
        assert!(store.get(rolled_back).await.unwrap().is_none());
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id) VALUES ($1)")
            .bind(gen_id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let committed = kiln_store::PgStore::enqueue_in(&mut tx, probe())
            .await
            .unwrap()
            .id;
        tx.commit().await.unwrap();
        assert!(store.get(committed).await.unwrap().is_some());
    } else {
        let sqlite = kiln_store::SqliteStore::open(&db.url, 2).await.unwrap();
        sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)")
            .execute(sqlite.writer())
            .await
            .unwrap();
        let mut tx = sqlite.writer().begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id) VALUES ('g1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let rolled_back = kiln_store::SqliteStore::enqueue_in(&mut tx, probe())
            .await
            .unwrap()
            .id;
        tx.rollback().await.unwrap();
        assert!(store.get(rolled_back).await.unwrap().is_none());
        let mut tx = sqlite.writer().begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id) VALUES ('g1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let committed = kiln_store::SqliteStore::enqueue_in(&mut tx, probe())
            .await
            .unwrap()
            .id;
        tx.commit().await.unwrap();
        assert!(store.get(committed).await.unwrap().is_some());
    }
}

/// The instant `d` before now: what "older than `d`" prunes up to.
fn ago(d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::TimeDelta::from_std(d).unwrap()
}
