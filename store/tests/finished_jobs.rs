//! Finished jobs live in `finished_jobs`, not in the hot `jobs` table:
//! every read sees them as before, idempotency keys outlive the move, and
//! retention removes exactly what is older than its cutoff. On Postgres,
//! a day past retention is a partition dropped whole.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use kiln_jobs::{Probe, UserId};
use kiln_store::{
    CancelOutcome, Completion, Failure, JobState, NewJob, Store, generations::JobFilter,
    testing::TestDatabase,
};
use serde_json::json;
use uuid::Uuid;

kiln_store::both_databases!(
    finished_jobs_read_back_as_before,
    jobs_holds_no_finished_row,
    an_idempotency_key_outlives_its_job_finishing,
    prune_removes_exactly_the_old_finished_rows,
);

const LEASE: Duration = Duration::from_secs(30);

fn probe(owner: UserId) -> NewJob {
    NewJob::of(&Probe::default()).unwrap().owner(owner)
}

async fn claim_one(store: &Store) -> kiln_store::ClaimedJob {
    let mut claimed = store
        .claim("w", &["default".to_owned()], 1, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

async fn complete(store: &Store, job: &kiln_store::ClaimedJob) {
    let done = Completion {
        lease: job.lease,
        result: json!({"ok": true}),
    };
    assert_eq!(store.complete(&[done]).await.unwrap(), 1);
}

/// Enqueues, claims and completes one job of `owner`.
async fn finished(store: &Store, owner: UserId) -> Uuid {
    let id = store.enqueue(probe(owner)).await.unwrap().id;
    let job = claim_one(store).await;
    assert_eq!(job.lease.id, id);
    complete(store, &job).await;
    id
}

/// `(rows of jobs, rows of finished_jobs)`, counted in SQL.
async fn rows(db: &TestDatabase) -> (i64, i64) {
    let sql = "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM finished_jobs)";
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let n = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        let n = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

async fn finished_jobs_read_back_as_before(store: Store, _: &TestDatabase) {
    let owner = UserId(Uuid::now_v7());
    let succeeded = finished(&store, owner).await;

    let failed = store.enqueue(probe(owner)).await.unwrap().id;
    let job = claim_one(&store).await;
    let failure = Failure {
        code: "broken".into(),
        message: "for good".into(),
        retry_in: None,
    };
    assert!(store.fail(job.lease, failure).await.unwrap());

    let cancelled = store.enqueue(probe(owner)).await.unwrap().id;
    assert_eq!(
        store.cancel(cancelled, Some(owner)).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let waiting = store.enqueue(probe(owner)).await.unwrap().id;

    let done = store.get(succeeded).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert_eq!(done.progress, 100);
    assert_eq!(done.owner, Some(owner));
    assert_eq!(done.attempt, 1);
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    assert!(done.lease_owner.is_none() && done.lease_expires_at.is_none());

    let failed_row = store.get(failed).await.unwrap().unwrap();
    assert_eq!(failed_row.state, JobState::Failed);
    assert_eq!(failed_row.errors.len(), 1);
    assert_eq!(failed_row.errors[0].code, "broken");
    let cancelled_row = store.get(cancelled).await.unwrap().unwrap();
    assert_eq!(cancelled_row.state, JobState::Cancelled);
    assert!(cancelled_row.cancel_requested);

    // get_many finds each where it is, as get does.
    let mut many = store
        .get_many(&[succeeded, failed, cancelled, waiting, Uuid::now_v7()])
        .await
        .unwrap();
    many.sort_by_key(|j| j.id);
    let mut one_by_one = Vec::new();
    for id in [succeeded, failed, cancelled, waiting] {
        one_by_one.push(store.get(id).await.unwrap().unwrap());
    }
    one_by_one.sort_by_key(|j| j.id);
    assert_eq!(many, one_by_one);

    // The owner's list: newest first across both tables, with the cursor.
    let all = JobFilter {
        state: None,
        kind: None,
        before: None,
        limit: 10,
    };
    let ids: Vec<Uuid> = store
        .jobs_of_owner(owner, &all)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec![waiting, cancelled, failed, succeeded]);
    let page = JobFilter {
        before: Some(cancelled),
        limit: 1,
        ..all.clone()
    };
    let ids: Vec<Uuid> = store
        .jobs_of_owner(owner, &page)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec![failed]);
    let only_succeeded = JobFilter {
        state: Some(JobState::Succeeded),
        ..all.clone()
    };
    let listed = store.jobs_of_owner(owner, &only_succeeded).await.unwrap();
    assert_eq!(listed, vec![done.clone()]);

    // A finished job cannot be cancelled, and stays another's.
    assert_eq!(
        store.cancel(succeeded, Some(owner)).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Succeeded)
    );
    assert_eq!(
        store.cancel(failed, None).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Failed)
    );
    assert_eq!(
        store
            .cancel(succeeded, Some(UserId(Uuid::now_v7())))
            .await
            .unwrap(),
        CancelOutcome::NotFound
    );
    assert_eq!(store.get(succeeded).await.unwrap().unwrap(), done);

    // Stats count finished jobs too.
    let stats = store.queue_stats().await.unwrap();
    let count = |state| {
        stats
            .iter()
            .filter(|s| s.queue == "default" && s.state == state)
            .map(|s| s.count)
            .sum::<i64>()
    };
    assert_eq!(count(JobState::Succeeded), 1);
    assert_eq!(count(JobState::Failed), 1);
    assert_eq!(count(JobState::Cancelled), 1);
    assert_eq!(count(JobState::Available), 1);
}

async fn jobs_holds_no_finished_row(store: Store, db: &TestDatabase) {
    let owner = UserId(Uuid::now_v7());
    for _ in 0..3 {
        finished(&store, owner).await;
    }
    // A running job whose cancellation was asked for, handed back.
    let id = store.enqueue(probe(owner)).await.unwrap().id;
    let job = claim_one(&store).await;
    assert_eq!(
        store.cancel(id, None).await.unwrap(),
        CancelOutcome::Cancelling
    );
    assert_eq!(store.release(&[job.lease]).await.unwrap(), 1);
    // A lost worker on the last attempt: the rescue fails it for good.
    let lost = store
        .enqueue(probe(owner).max_attempts(1))
        .await
        .unwrap()
        .id;
    store
        .claim("w", &["default".to_owned()], 1, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rescued = store.rescue_expired(5).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, JobState::Failed);
    // A running job stopped for its cancellation.
    let stopped = store.enqueue(probe(owner)).await.unwrap().id;
    let job = claim_one(&store).await;
    store.cancel(stopped, None).await.unwrap();
    assert!(store.finish_cancelled(job.lease, "asked").await.unwrap());
    let waiting = store.enqueue(probe(owner)).await.unwrap().id;

    assert_eq!(rows(db).await, (1, 6));
    assert_eq!(state(&store, id).await, JobState::Cancelled);
    assert_eq!(state(&store, lost).await, JobState::Failed);
    assert_eq!(state(&store, stopped).await, JobState::Cancelled);
    assert_eq!(state(&store, waiting).await, JobState::Available);
}

async fn state(store: &Store, id: Uuid) -> JobState {
    store.get(id).await.unwrap().unwrap().state
}

async fn an_idempotency_key_outlives_its_job_finishing(store: Store, _: &TestDatabase) {
    let owner = UserId(Uuid::now_v7());
    let first = store
        .enqueue(probe(owner).idempotency_key("k"))
        .await
        .unwrap();
    assert!(first.created);
    let job = claim_one(&store).await;
    complete(&store, &job).await;

    let again = store
        .enqueue(probe(owner).idempotency_key("k"))
        .await
        .unwrap();
    assert_eq!(
        again,
        kiln_store::Enqueued {
            id: first.id,
            created: false
        }
    );
    let bulk = store
        .enqueue_many(vec![
            probe(owner).idempotency_key("k"),
            probe(owner).idempotency_key("other"),
        ])
        .await
        .unwrap();
    assert_eq!(bulk.len(), 1);
    assert_ne!(bulk[0], first.id);
    // Another owner's key is its own.
    assert!(
        store
            .enqueue(probe(UserId(Uuid::now_v7())).idempotency_key("k"))
            .await
            .unwrap()
            .created
    );

    // Pruning the job frees its key; the unfinished job keeps its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .prune_finished(ago(Duration::from_millis(10)), 100)
            .await
            .unwrap(),
        1
    );
    let after = store
        .enqueue(probe(owner).idempotency_key("k"))
        .await
        .unwrap();
    assert!(after.created);
    assert_ne!(after.id, first.id);
    let other = store
        .enqueue(probe(owner).idempotency_key("other"))
        .await
        .unwrap();
    assert_eq!((other.id, other.created), (bulk[0], false));
}

async fn prune_removes_exactly_the_old_finished_rows(store: Store, db: &TestDatabase) {
    let owner = UserId(Uuid::now_v7());
    let mut old = Vec::new();
    for _ in 0..5 {
        old.push(finished(&store, owner).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recent = finished(&store, owner).await;
    let waiting = store.enqueue(probe(owner)).await.unwrap().id;

    // Bounded batches: two, two, then the last old one.
    let cutoff = ago(Duration::from_millis(150));
    assert_eq!(store.prune_finished(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_finished(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.prune_finished(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.prune_finished(cutoff, 2).await.unwrap(), 0);
    for id in old {
        assert!(store.get(id).await.unwrap().is_none());
    }
    assert_eq!(state(&store, recent).await, JobState::Succeeded);
    assert_eq!(state(&store, waiting).await, JobState::Available);
    assert_eq!(rows(db).await, (1, 1));
}

/// Postgres only: the day partitions of `finished_jobs`.
mod partitions {
    use super::*;
    use sqlx::PgPool;

    async fn setup() -> (TestDatabase, Store, PgPool) {
        let db = TestDatabase::postgres().await;
        let store = db.store().await.unwrap();
        let pool = PgPool::connect(&db.url).await.unwrap();
        (db, store, pool)
    }

    async fn partition_exists(pool: &PgPool, name: &str) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)
                 AND EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                             WHERE c.relname = $1 AND i.inhparent = 'finished_jobs'::regclass)",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    async fn table_exists(pool: &PgPool, name: &str) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// The partition that holds the finished job `id`.
    async fn home(pool: &PgPool, id: Uuid) -> String {
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM finished_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn backdate(pool: &PgPool, id: Uuid, at: &str) {
        sqlx::query("UPDATE finished_jobs SET finished_at = $2::timestamptz WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_makes_today_and_the_coming_days() {
        let (_db, store, pool) = setup().await;
        let today = chrono::Utc::now().date_naive();
        for ahead in 0..=3 {
            let day = today + chrono::Days::new(ahead);
            let name = format!("finished_jobs_p{}", day.format("%Y%m%d"));
            assert!(partition_exists(&pool, &name).await, "{name}");
        }
        // Idempotent.
        store.ensure_finished_partitions().await.unwrap();
        store.ensure_finished_partitions().await.unwrap();
        let id = finished(&store, UserId(Uuid::now_v7())).await;
        assert_eq!(
            home(&pool, id).await,
            format!("finished_jobs_p{}", today.format("%Y%m%d"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_a_day_drops_its_partition() {
        let (_db, store, pool) = setup().await;
        let owner = UserId(Uuid::now_v7());
        // A day long gone, with a partition: two jobs, one of them keyed.
        sqlx::query("SELECT kiln_ensure_finished_partitions('2000-01-01', 0)")
            .execute(&pool)
            .await
            .unwrap();
        let keyed = store
            .enqueue(probe(owner).idempotency_key("old"))
            .await
            .unwrap()
            .id;
        complete(&store, &claim_one(&store).await).await;
        let plain = finished(&store, owner).await;
        // And a day without one: its job is in the DEFAULT partition.
        let stray = finished(&store, owner).await;
        let recent = finished(&store, owner).await;
        backdate(&pool, keyed, "2000-01-01 08:00Z").await;
        backdate(&pool, plain, "2000-01-01 20:00Z").await;
        backdate(&pool, stray, "2000-01-05 12:00Z").await;
        assert_eq!(home(&pool, keyed).await, "finished_jobs_p20000101");
        assert_eq!(home(&pool, stray).await, "finished_jobs_default");

        let removed = store
            .prune_finished(ago(Duration::from_secs(24 * 3600)), 100)
            .await
            .unwrap();
        assert_eq!(removed, 3);
        assert!(!table_exists(&pool, "finished_jobs_p20000101").await);
        for id in [keyed, plain, stray] {
            assert!(store.get(id).await.unwrap().is_none());
        }
        assert_eq!(state(&store, recent).await, JobState::Succeeded);
        let today = chrono::Utc::now().date_naive().format("%Y%m%d");
        assert!(partition_exists(&pool, &format!("finished_jobs_p{today}")).await);
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM job_keys WHERE job_id = $1")
            .bind(keyed)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(keys, 0);
        // The key is free again.
        assert!(
            store
                .enqueue(probe(owner).idempotency_key("old"))
                .await
                .unwrap()
                .created
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_partition_takes_its_rows_from_the_default() {
        let (_db, store, pool) = setup().await;
        let id = finished(&store, UserId(Uuid::now_v7())).await;
        backdate(&pool, id, "2000-02-01 12:00Z").await;
        assert_eq!(home(&pool, id).await, "finished_jobs_default");
        sqlx::query("SELECT kiln_ensure_finished_partitions('2000-02-01', 0)")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(home(&pool, id).await, "finished_jobs_p20000201");
        assert_eq!(state(&store, id).await, JobState::Succeeded);
    }
}

/// The instant `d` before now: what "older than `d`" prunes up to.
fn ago(d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::TimeDelta::from_std(d).unwrap()
}
