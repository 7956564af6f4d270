//! The daily access-log archive, scheduled by two `kiln schedule` replicas
//! and written by a `kiln work` on PostgreSQL: each slot writes it once,
//! the archive holds exactly its day's entries, and the operators get a
//! message per run.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{io::Read as _, time::Duration};

use chrono::{NaiveTime, TimeDelta, Utc};
use common::{kiln, wait_job};
use kiln_jobs::{Job, OperatorExport};
use kiln_store::{
    JobState,
    access_log::{AccessEvent, Origin},
    testing::{TestDatabase, account},
};
use uuid::Uuid;

/// Every two seconds; the other plans out of the way.
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";
const NEVER_IN_THIS_TEST: &str = "0 0 0 1 1 *";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_archive_each_slot_once_with_exactly_the_days_entries() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let user = account(&store).await;
    let today = Utc::now().date_naive().and_time(NaiveTime::MIN).and_utc();
    let yesterday = today - TimeDelta::days(1);
    // Entries at the edges of yesterday, and either side of it.
    let mut inside = Vec::new();
    for (at, belongs) in [
        (yesterday - TimeDelta::milliseconds(1), false),
        (yesterday, true),
        (yesterday + TimeDelta::hours(12), true),
        (today - TimeDelta::milliseconds(1), true),
        (today, false),
    ] {
        let id = store
            .record_access(Some(user), AccessEvent::Login, &Origin::default())
            .await
            .unwrap();
        sqlx::query("UPDATE access_log SET created_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        if belongs {
            inside.push(id);
        }
    }

    let objects = tempfile::tempdir().unwrap();
    let schedulers: Vec<_> = (0..2)
        .map(|_| {
            kiln(&["schedule"])
                .database(&db.url)
                .env("KILN_SCHEDULER_ACCESS_LOG_ARCHIVE_CRON", EVERY_TWO_SECONDS)
                .env("KILN_SCHEDULER_RETENTION_PURGE_CRON", NEVER_IN_THIS_TEST)
                .env("KILN_SCHEDULER_ACCOUNTING_EXPORT_CRON", NEVER_IN_THIS_TEST)
                .spawn()
        })
        .collect();
    let worker = kiln(&["work"])
        .database(&db.url)
        .env("KILN_STORAGE_ROOT", objects.path().display())
        .env("KILN_EMAIL_OPERATOR_ADDRESS", "ops@example.com")
        .spawn();
    for k in schedulers.iter().chain([&worker]) {
        k.wait_healthy().await;
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    drop(schedulers);

    // One job per slot, each finished.
    let jobs: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, idempotency_key FROM jobs WHERE kind = $1
         UNION ALL SELECT id, idempotency_key FROM finished_jobs WHERE kind = $1",
    )
    .bind(OperatorExport::KIND)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut slots: Vec<&str> = jobs.iter().map(|(_, k)| k.as_str()).collect();
    slots.sort();
    let distinct = {
        let mut d = slots.clone();
        d.dedup();
        d
    };
    assert_eq!(slots, distinct, "a slot was archived twice");
    assert!(
        slots.len() >= 3,
        "only {} slots in 9 s: {slots:?}",
        slots.len()
    );
    for (id, _) in &jobs {
        let job = wait_job(&store, *id, "finished", |j| j.state.is_final()).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.result.unwrap()["rows"], inside.len());
    }

    // One file and one record for the day, whatever the number of runs.
    let records = store.operator_exports(None, 10).await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].period_start, yesterday);
    let key = format!(
        "operator-exports/access-log/{}.jsonl.gz",
        yesterday.format("%Y-%m-%d")
    );
    assert_eq!(records[0].object_key, key);
    let bytes = std::fs::read(objects.path().join(&key)).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    let ids: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, inside, "{text}");

    // The operators heard of each run.
    let told = worker.outbox_messages("ops@example.com");
    assert_eq!(told.len(), jobs.len());
    assert!(told[0].contains("access-log archive"), "{}", told[0]);
}
