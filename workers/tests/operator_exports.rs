//! The operators' scheduled exports, in process through `TestWorker` on
//! PostgreSQL and SQLite: each file holds exactly its period's records, a
//! run again replaces it, the operators are told, and retention removes it
//! with the records it holds.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Read as _;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use kiln_jobs::{OperatorExport, OperatorExportKind, OrderId, RetentionPurge, RetentionSettings};
use kiln_store::{
    Store,
    access_log::{AccessEvent, Origin},
    orders::{NewOrder, Payment, PaymentNotification},
    testing::{self, TestDatabase},
};
use kiln_workers::{Clock, testing::TestWorker};
use uuid::Uuid;

kiln_store::both_databases!(
    the_access_log_archive_holds_exactly_its_days_entries,
    the_accounting_export_holds_the_months_paid_orders_without_the_person,
    retention_removes_an_archive_with_the_records_it_holds,
);

fn midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive().and_time(NaiveTime::MIN).and_utc()
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap();
    text
}

async fn archive(worker: &TestWorker, slot: DateTime<Utc>) -> kiln_jobs::OperatorExportResult {
    worker
        .perform(OperatorExport {
            export: OperatorExportKind::AccessLog,
            slot,
        })
        .await
        .unwrap()
        .expect_done()
}

async fn the_access_log_archive_holds_exactly_its_days_entries(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone()).with_deps(|d| {
        d.operator_email = Some("ops@example.com".into());
    });
    let user = testing::account(&store).await;
    let origin = Origin {
        ip: Some("203.0.113.9".into()),
        user_agent: Some("curl/8".into()),
    };
    for event in [AccessEvent::Login, AccessEvent::Logout, AccessEvent::Login] {
        store
            .record_access(Some(user), event, &origin)
            .await
            .unwrap();
    }
    let entries = store.access_log(user, None, 10).await.unwrap();
    // The day the entries were written (should they straddle midnight,
    // only those of the first day belong to its archive).
    let day = midnight(entries.last().unwrap().created_at);
    let mut expected: Vec<i64> = entries
        .iter()
        .filter(|e| midnight(e.created_at) == day)
        .map(|e| e.id)
        .collect();
    expected.sort();

    // The slot after the day archives it.
    let slot = day + TimeDelta::days(1) + TimeDelta::minutes(45);
    let done = archive(&worker, slot).await;
    assert_eq!(done.rows, expected.len() as u64);
    assert!(done.announced);
    assert_eq!(
        done.object_key,
        format!(
            "operator-exports/access-log/{}.jsonl.gz",
            day.format("%Y-%m-%d")
        )
    );
    let bytes = worker
        .objects()
        .get(&done.object_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bytes.len() as u64, done.bytes);
    let lines: Vec<serde_json::Value> = gunzip(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, expected);
    assert_eq!(lines[0]["user_id"], serde_json::json!(user));
    assert_eq!(lines[0]["ip"], "203.0.113.9");
    assert_eq!(lines[0]["event"], "login");

    // The slot of that day archives the day before: none of these.
    let before = archive(&worker, day + TimeDelta::minutes(45)).await;
    assert_eq!(before.rows, 0);
    // Run again for the same slot: the same file and record, not a second.
    let again = archive(&worker, slot).await;
    assert_eq!((again.id, again.rows), (done.id, done.rows));
    let listed = store.operator_exports(None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let record = listed.iter().find(|r| r.id == done.id).unwrap();
    assert_eq!(
        (record.period_start, record.period_end),
        (day, day + TimeDelta::days(1))
    );
    assert!(
        record.expires_at >= day + TimeDelta::days(181),
        "{record:?}"
    );

    // The operators were told where it is (three runs, three emails).
    let emails = worker.emails();
    assert_eq!(emails.len(), 3);
    assert!(emails[0].contains("To: ops@example.com"), "{}", emails[0]);
    assert!(emails[0].contains("access-log archive"), "{}", emails[0]);
    assert!(emails[0].contains("GET /admin/v1/exports"), "{}", emails[0]);
}

async fn the_accounting_export_holds_the_months_paid_orders_without_the_person(
    store: Store,
    _: &TestDatabase,
) {
    let worker = TestWorker::new(store.clone());
    let user = testing::account(&store).await;
    let month = |y, m| {
        chrono::NaiveDate::from_ymd_opt(y, m, 1)
            .unwrap()
            .and_time(NaiveTime::MIN)
            .and_utc()
    };
    // Paid at the first and last moment of November, in October and in
    // December; one order never paid.
    let november = month(2026, 11);
    let paid = [
        (november, "txn_first"),
        (month(2026, 12) - TimeDelta::milliseconds(1), "txn_last"),
        (november - TimeDelta::seconds(1), "txn_october"),
        (month(2026, 12), "txn_december"),
    ];
    let mut ids = Vec::new();
    for (at, txn) in paid.iter().copied().chain([(november, "")]) {
        let id = OrderId(Uuid::now_v7());
        store
            .open_order(&NewOrder {
                id,
                user,
                provider: "dev".into(),
                pack: "small".into(),
                credits: 100,
            })
            .await
            .unwrap();
        if !txn.is_empty() {
            store
                .apply_payment(&PaymentNotification {
                    provider: "dev".into(),
                    event_id: format!("evt_{txn}"),
                    event_type: "transaction.completed".into(),
                    payment: Some(Payment {
                        order: id,
                        account: user,
                        transaction_id: txn.into(),
                        amount: 499,
                        currency: "EUR".into(),
                        paid_at: at,
                    }),
                })
                .await
                .unwrap();
        }
        ids.push(id);
    }

    let done = worker
        .perform(OperatorExport {
            export: OperatorExportKind::Accounting,
            slot: month(2026, 12) + TimeDelta::hours(4),
        })
        .await
        .unwrap()
        .expect_done();
    assert_eq!(done.object_key, "operator-exports/accounting/2026-11.csv");
    assert_eq!(done.rows, 2);
    assert!(!done.announced, "no operator address is configured");
    let csv = String::from_utf8(
        worker
            .objects()
            .get(&done.object_key)
            .await
            .unwrap()
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "order_id,provider,transaction_id,pack,credits,amount_minor,currency,created_at,paid_at"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    for (line, txn) in lines[1..].iter().zip(["txn_first", "txn_last"]) {
        assert!(line.contains(txn) && line.contains(",499,EUR,"), "{line}");
    }
    assert!(!csv.contains(&user.to_string()), "the person is not in it");
}

async fn retention_removes_an_archive_with_the_records_it_holds(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let user = testing::account(&store).await;
    store
        .record_access(Some(user), AccessEvent::Login, &Origin::default())
        .await
        .unwrap();
    let written = store.access_log(user, None, 1).await.unwrap()[0].created_at;
    let day = midnight(written);
    let done = archive(&worker, day + TimeDelta::days(1)).await;
    assert_eq!(done.rows, 1);

    let retention = RetentionSettings::default();
    let purge = |now: DateTime<Utc>| {
        let (store, objects) = (store.clone(), worker.objects().clone());
        let retention = retention.clone();
        async move {
            TestWorker::over(store, &retention, Clock::fixed(now), objects)
                .perform(RetentionPurge {})
                .await
                .unwrap()
                .expect_done()
        }
    };
    // A day before the entries are due, the archive stays…
    let _ = purge(day + TimeDelta::days(180)).await;
    assert!(worker.objects().exists(&done.object_key).await.unwrap());
    assert_eq!(store.operator_exports(None, 10).await.unwrap().len(), 1);
    // …and goes with them.
    let _ = purge(day + TimeDelta::days(182)).await;
    assert!(!worker.objects().exists(&done.object_key).await.unwrap());
    assert!(store.operator_exports(None, 10).await.unwrap().is_empty());
}
