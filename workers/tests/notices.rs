//! Policy and security notices, fanned out by `notify_users` and sent by
//! `send_email` / `send_sms` in each account's language, in process
//! through `TestWorker` on PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use kiln_jobs::{Broadcast, Locale, LocalizedText, NotifyUsers, SendEmail, SendSms};
use kiln_store::{
    Store,
    accounts::Identifier,
    notices::{PolicyVersion, SecurityNotice},
    testing::{TestDatabase, verified_account},
};
use kiln_workers::testing::TestWorker;
use uuid::Uuid;

kiln_store::both_databases!(
    a_policy_notice_goes_out_once_in_each_accounts_language,
    a_security_notice_goes_out_in_each_accounts_language,
    a_fan_out_of_a_vanished_notice_fails_for_good,
);

fn email() -> Identifier {
    Identifier::Email(format!("{}@example.com", Uuid::now_v7().simple()))
}

fn phone() -> Identifier {
    let n = Uuid::now_v7().as_u128() % 10_000_000;
    Identifier::Phone(format!("+1555{n:07}"))
}

/// Runs every notice waiting in the notifications queue through the
/// worker, as `kiln work` would.
async fn send_queued(worker: &TestWorker) -> usize {
    let claimed = worker
        .store()
        .claim(
            "test",
            &["notifications".to_owned()],
            1000,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let n = claimed.len();
    for job in claimed {
        let sent = match job.kind.as_str() {
            "send_email" => worker
                .perform(serde_json::from_value::<SendEmail>(job.payload).unwrap())
                .await
                .unwrap()
                .result
                .map(|_| ()),
            "send_sms" => worker
                .perform(serde_json::from_value::<SendSms>(job.payload).unwrap())
                .await
                .unwrap()
                .result
                .map(|_| ()),
            other => panic!("{other} in the notifications queue"),
        };
        sent.unwrap();
    }
    n
}

/// Three accounts, one per language: English by email, simplified Chinese
/// by email, traditional Chinese by SMS.
async fn readers(store: &Store) {
    verified_account(store, email(), Locale::En).await;
    verified_account(store, email(), Locale::ZhHans).await;
    verified_account(store, phone(), Locale::ZhHant).await;
}

async fn a_policy_notice_goes_out_once_in_each_accounts_language(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    readers(&store).await;
    send_queued(&worker).await;
    let effective_at = Utc::now() + TimeDelta::days(10);
    store
        .publish_policy(&PolicyVersion {
            version: "2027-01".into(),
            effective_at,
            summary: LocalizedText {
                en: "We now keep access logs for six months.".into(),
                zh_hans: Some("我们现在将访问日志保存六个月。".into()),
                zh_hant: Some("我們現在將存取日誌保存六個月。".into()),
            },
            published_at: Utc::now(),
        })
        .await
        .unwrap();
    let broadcast = Broadcast::Policy {
        version: "2027-01".into(),
    };

    let result = worker
        .perform(NotifyUsers {
            broadcast: broadcast.clone(),
        })
        .await
        .unwrap()
        .expect_done();
    assert_eq!((result.queued, result.recipients), (3, 3));
    // Run again (a retry after a crash): nobody is queued twice.
    let again = worker
        .perform(NotifyUsers { broadcast })
        .await
        .unwrap()
        .expect_done();
    assert_eq!((again.queued, again.recipients), (0, 3));
    assert_eq!(send_queued(&worker).await, 3);

    let emails = worker.emails();
    assert_eq!(emails.len(), 2, "{emails:?}");
    let date = effective_at.format("%Y-%m-%d").to_string();
    let en = emails.iter().find(|e| e.contains("six months")).unwrap();
    assert!(en.contains("policy") && en.contains(&date), "{en}");
    let hans = emails.iter().find(|e| e.contains("六个月")).unwrap();
    assert!(hans.contains("政策变更") && hans.contains(&date), "{hans}");
    assert!(!hans.contains("six months"), "{hans}");
    let texts = worker.texts();
    assert_eq!(texts.len(), 1);
    assert!(
        texts[0].contains("政策將於") && texts[0].contains(&date),
        "{}",
        texts[0]
    );
}

async fn a_security_notice_goes_out_in_each_accounts_language(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    readers(&store).await;
    send_queued(&worker).await;
    let notice = SecurityNotice {
        id: Uuid::now_v7(),
        subject: LocalizedText {
            en: "Log server access".into(),
            zh_hans: Some("日志服务器遭访问".into()),
            zh_hant: None,
        },
        body: LocalizedText {
            en: "On 20 Nov we found unauthorised access.".into(),
            zh_hans: Some("11 月 20 日我们发现了未经授权的访问。".into()),
            zh_hant: None,
        },
        everyone: true,
        created_at: Utc::now(),
        job_id: None,
    };
    store.record_security_notice(&notice, &[]).await.unwrap();
    let result = worker
        .perform(NotifyUsers {
            broadcast: Broadcast::Security {
                notice_id: notice.id,
            },
        })
        .await
        .unwrap()
        .expect_done();
    assert_eq!(result.queued, 3);
    assert_eq!(send_queued(&worker).await, 3);

    let emails = worker.emails();
    let en = emails
        .iter()
        .find(|e| e.contains("Log server access"))
        .unwrap();
    assert!(en.contains("unauthorised access"), "{en}");
    let hans = emails.iter().find(|e| e.contains("日志服务器")).unwrap();
    assert!(
        hans.contains("安全通知") && hans.contains("未经授权"),
        "{hans}"
    );
    // No traditional text given: the simplified one, under a traditional
    // frame.
    let texts = worker.texts();
    assert!(
        texts[0].contains("日志服务器") && texts[0].contains("安全通知"),
        "{}",
        texts[0]
    );
}

async fn a_fan_out_of_a_vanished_notice_fails_for_good(store: Store, _: &TestDatabase) {
    let worker = TestWorker::new(store.clone());
    let error = worker
        .perform(NotifyUsers {
            broadcast: Broadcast::Security {
                notice_id: Uuid::now_v7(),
            },
        })
        .await
        .unwrap()
        .expect_error();
    assert_eq!(error.code(), "notice_missing");
}
