//! A policy notice to 5,000 accounts through real `kiln work` processes
//! on PostgreSQL: the fan-out is SIGKILLed midway, rescued by another
//! process, and every account still gets exactly one email.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use common::{kiln, wait_job};
use kiln_jobs::{Broadcast, Locale, LocalizedText};
use kiln_store::{
    JobState, Store,
    accounts::{Identifier, NewUser},
    notices::PolicyVersion,
    testing::TestDatabase,
};
use nix::sys::signal::Signal;
use sqlx::Connection;

const ACCOUNTS: usize = 5000;

async fn accounts(store: &Store, db: &TestDatabase) {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (chunk..ACCOUNTS).step_by(16) {
                store
                    .create_user(NewUser {
                        identifier: Identifier::Email(format!("reader{i}@example.com")),
                        password_hash: "$2b$04$notusedbythistestnotusedbythistestnotusedbyt".into(),
                        birth_date: chrono::NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
                        referral_code: format!("READER{i}"),
                        referred_by_code: None,
                        locale: if i % 3 == 0 {
                            Locale::ZhHans
                        } else {
                            Locale::En
                        },
                    })
                    .await
                    .unwrap()
                    .id()
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // Verified as if each had entered its code (notices go only to such).
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE users SET verified_at = now()")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Each email in an outbox, by the address it went to.
fn emails_by_address(outbox: &std::path::Path) -> HashMap<String, Vec<String>> {
    let mut by = HashMap::<String, Vec<String>>::new();
    for entry in std::fs::read_dir(outbox).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let to = text
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .unwrap()
            .to_owned();
        by.entry(to).or_default().push(text);
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_accounts_each_get_one_email_though_the_fan_out_is_killed() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    accounts(&store, &db).await;

    // The senders never die: each email is sent once. The fan-out runs in
    // a process of its own, in small batches, so it can be killed midway.
    let sender = kiln(&["work"])
        .database(&db.url)
        .env("KILN_WORKER_QUEUES", "[notifications]")
        .env("KILN_WORKER_CONCURRENCY", 32)
        .env("KILN_WORKER_MAINTENANCE_INTERVAL_MS", 500)
        .spawn();
    let fan_out = || {
        kiln(&["work"])
            .database(&db.url)
            .env("KILN_WORKER_QUEUES", "[maintenance]")
            .env("KILN_WORKER_LEASE_MS", 1500)
            .env("KILN_WORKER_NOTIFY_BATCH", 20)
            .env("KILN_WORKER_MAINTENANCE_INTERVAL_MS", 500)
            .spawn()
    };
    let victim = fan_out();
    sender.wait_healthy().await;
    victim.wait_healthy().await;

    let now = Utc::now();
    let job = store
        .publish_policy(&PolicyVersion {
            version: "2027-01".into(),
            effective_at: now + TimeDelta::days(14),
            summary: LocalizedText {
                en: "Access logs are kept six months.".into(),
                zh_hans: Some("访问日志保存六个月。".into()),
                zh_hant: None,
            },
            published_at: now,
        })
        .await
        .unwrap()
        .unwrap();
    let broadcast = Broadcast::Policy {
        version: "2027-01".into(),
    };

    // Killed once a fifth of the accounts have theirs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let n = store.recipients(&broadcast).await.unwrap();
        if n >= ACCOUNTS as u64 / 5 {
            victim.signal(Signal::SIGKILL);
            break store.recipients(&broadcast).await.unwrap();
        }
        assert!(Instant::now() < deadline, "the fan-out never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        at_kill < ACCOUNTS as u64,
        "the fan-out finished before it could be killed"
    );
    let rescuer = fan_out();
    rescuer.wait_healthy().await;

    let done = wait_job(&store, job, "succeeded", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2, "the rescued run finished it: {done:?}");
    let result = done.result.unwrap();
    assert_eq!(result["recipients"], ACCOUNTS);
    let queued_after = result["queued"].as_u64().unwrap();
    eprintln!(
        "fan-out killed at {at_kill} of {ACCOUNTS} recipients; the rescued run queued {queued_after}"
    );
    assert!(
        queued_after <= ACCOUNTS as u64 - at_kill,
        "the rescued run queued {queued_after}, after {at_kill} before the kill"
    );

    // Every email sent: exactly one per account, in its language.
    let outbox = &sender.outboxes[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    let by = loop {
        let by = emails_by_address(outbox);
        let sent: usize = by.values().map(Vec::len).sum();
        if sent >= ACCOUNTS {
            // A moment for any duplicate to show.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break emails_by_address(outbox);
        }
        assert!(
            Instant::now() < deadline,
            "only {sent} of {ACCOUNTS} emails were sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(by.len(), ACCOUNTS);
    let twice: Vec<&String> = by
        .iter()
        .filter(|(_, m)| m.len() != 1)
        .map(|(a, _)| a)
        .collect();
    assert!(twice.is_empty(), "emailed more than once: {twice:?}");
    let zh = &by["reader3@example.com"][0];
    assert!(zh.contains("访问日志保存六个月"), "{zh}");
    let en = &by["reader1@example.com"][0];
    assert!(en.contains("six months") && !en.contains("访问"), "{en}");
}
