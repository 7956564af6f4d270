//! Policy versions, their pending notice, and the notice fan-out that
//! reaches each account once, on both databases.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::{collections::HashMap, time::Duration};

use chrono::{TimeDelta, Utc};
use kiln_jobs::{Broadcast, Locale, LocalizedText, Notice, SendEmail, UserId};
use kiln_store::{
    Store,
    accounts::Identifier,
    notices::{PolicyVersion, SecurityNotice},
    testing::{TestDatabase, account, verified_account},
};
use uuid::Uuid;

kiln_store::both_databases!(
    a_policy_version_is_published_once_with_its_fan_out,
    a_policy_is_pending_until_acknowledged,
    the_policy_fan_out_reaches_each_active_account_once,
    a_fan_out_run_again_after_a_kill_goes_on_where_it_stopped,
    a_security_notice_reaches_the_named_accounts_restricted_too,
    racing_fan_outs_never_notify_anyone_twice,
    an_erased_account_leaves_no_notice_rows,
);

fn version(name: &str) -> PolicyVersion {
    let now = Utc::now();
    PolicyVersion {
        version: name.into(),
        effective_at: now + TimeDelta::days(8),
        summary: LocalizedText {
            en: format!("What changes in {name}"),
            zh_hans: Some(format!("{name} 的变更")),
            zh_hant: None,
        },
        published_at: now,
    }
}

fn email() -> Identifier {
    Identifier::Email(format!("{}@example.com", Uuid::now_v7().simple()))
}

fn phone() -> Identifier {
    // E.164, unique per call.
    let n = Uuid::now_v7().as_u128() % 10_000_000_000;
    Identifier::Phone(format!("+49151{n:010}"))
}

/// Every notice waiting in the notifications queue, claimed: (kind, user).
async fn queued_notices(store: &Store) -> Vec<(String, UserId, Notice)> {
    let mut out = Vec::new();
    loop {
        let claimed = store
            .claim(
                "test",
                &["notifications".to_owned()],
                1000,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        if claimed.is_empty() {
            return out;
        }
        for job in claimed {
            let send: SendEmail = serde_json::from_value(job.payload).unwrap();
            out.push((job.kind, send.user_id, send.notice));
        }
    }
}

async fn drain(store: &Store, broadcast: &Broadcast, limit: u32) -> u64 {
    let mut queued = 0;
    loop {
        let batch = store.fan_out(broadcast, limit).await.unwrap().unwrap();
        queued += batch.queued();
        if batch.done {
            return queued;
        }
    }
}

async fn a_policy_version_is_published_once_with_its_fan_out(store: Store, _: &TestDatabase) {
    let v = version("2027-01");
    let job = store.publish_policy(&v).await.unwrap().expect("published");
    let record = store.get(job).await.unwrap().unwrap();
    assert_eq!(record.kind, "notify_users");
    assert_eq!(
        record.payload,
        serde_json::json!({"broadcast": {"notice": "policy", "version": "2027-01"}})
    );
    // The same name again stores nothing and queues nothing.
    assert_eq!(
        store.publish_policy(&version("2027-01")).await.unwrap(),
        None
    );
    let stored = store.policy_version("2027-01").await.unwrap().unwrap();
    assert_eq!(stored.summary, v.summary);
    assert_eq!(
        stored.effective_at.timestamp_millis(),
        v.effective_at.timestamp_millis()
    );
    assert_eq!(store.policy_versions().await.unwrap().len(), 1);
}

async fn a_policy_is_pending_until_acknowledged(store: Store, _: &TestDatabase) {
    let before = account(&store).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.publish_policy(&version("v1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after = account(&store).await;

    let pending = store.pending_policy(before).await.unwrap();
    assert_eq!(pending.map(|v| v.version).as_deref(), Some("v1"));
    // Who signed up after it was published agreed to it then.
    assert_eq!(store.pending_policy(after).await.unwrap(), None);

    assert!(!store.acknowledge_policy(before, "nope").await.unwrap());
    assert!(store.acknowledge_policy(before, "v1").await.unwrap());
    assert_eq!(store.pending_policy(before).await.unwrap(), None);

    tokio::time::sleep(Duration::from_millis(5)).await;
    store.publish_policy(&version("v2")).await.unwrap();
    for user in [before, after] {
        let pending = store.pending_policy(user).await.unwrap();
        assert_eq!(pending.map(|v| v.version).as_deref(), Some("v2"));
    }
    // Acknowledging the older one again does not hide the newer.
    assert!(store.acknowledge_policy(before, "v1").await.unwrap());
    assert!(store.pending_policy(before).await.unwrap().is_some());
    assert!(store.acknowledge_policy(before, "v2").await.unwrap());
    assert!(store.acknowledge_policy(before, "v1").await.unwrap());
    assert_eq!(store.pending_policy(before).await.unwrap(), None);
}

async fn the_policy_fan_out_reaches_each_active_account_once(store: Store, _: &TestDatabase) {
    let by_email = verified_account(&store, email(), Locale::En).await;
    let by_phone = verified_account(&store, phone(), Locale::ZhHant).await;
    let restricted = verified_account(&store, email(), Locale::En).await;
    store.set_restricted(restricted, true).await.unwrap();
    let deleted = verified_account(&store, email(), Locale::En).await;
    store.delete_account(deleted).await.unwrap();
    let _unverified = account(&store).await;
    let _ = queued_notices(&store).await;

    let broadcast = Broadcast::Policy {
        version: "v1".into(),
    };
    store.publish_policy(&version("v1")).await.unwrap();
    assert_eq!(drain(&store, &broadcast, 1).await, 2);
    // Done: another run finds nobody left.
    assert_eq!(drain(&store, &broadcast, 1).await, 0);
    assert_eq!(store.recipients(&broadcast).await.unwrap(), 2);

    let mut notices = queued_notices(&store).await;
    notices.sort_by_key(|(kind, ..)| kind.clone());
    let policy = Notice::PolicyVersion {
        version: "v1".into(),
    };
    assert_eq!(
        notices,
        vec![
            ("send_email".to_owned(), by_email, policy.clone()),
            ("send_sms".to_owned(), by_phone, policy),
        ]
    );
}

async fn a_fan_out_run_again_after_a_kill_goes_on_where_it_stopped(store: Store, _: &TestDatabase) {
    let mut users = Vec::new();
    for _ in 0..7 {
        users.push(verified_account(&store, email(), Locale::En).await);
    }
    let broadcast = Broadcast::Policy {
        version: "v1".into(),
    };
    store.publish_policy(&version("v1")).await.unwrap();
    // The first run commits two batches, then dies.
    for _ in 0..2 {
        let batch = store.fan_out(&broadcast, 3).await.unwrap().unwrap();
        assert_eq!(batch.queued(), 3);
    }
    // The rescued run goes on from the seventh account.
    assert_eq!(drain(&store, &broadcast, 3).await, 1);
    let mut reached: Vec<UserId> = queued_notices(&store)
        .await
        .into_iter()
        .map(|(_, u, _)| u)
        .collect();
    reached.sort();
    users.sort();
    assert_eq!(reached, users);
}

async fn a_security_notice_reaches_the_named_accounts_restricted_too(
    store: Store,
    _: &TestDatabase,
) {
    let named = verified_account(&store, email(), Locale::ZhHans).await;
    let named_restricted = verified_account(&store, phone(), Locale::En).await;
    store.set_restricted(named_restricted, true).await.unwrap();
    let other = verified_account(&store, email(), Locale::En).await;
    let _ = queued_notices(&store).await;

    let notice = SecurityNotice {
        id: Uuid::now_v7(),
        subject: LocalizedText::same("Incident"),
        body: LocalizedText::same("Details"),
        everyone: false,
        created_at: Utc::now(),
        job_id: None,
    };
    let job = store
        .record_security_notice(&notice, &[named, named_restricted])
        .await
        .unwrap();
    let stored = store.security_notice(notice.id).await.unwrap().unwrap();
    assert_eq!(stored.job_id, Some(job));
    assert!(!stored.everyone);
    let broadcast = Broadcast::Security {
        notice_id: notice.id,
    };
    assert_eq!(drain(&store, &broadcast, 10).await, 2);
    let reached: HashMap<UserId, Notice> = queued_notices(&store)
        .await
        .into_iter()
        .map(|(_, u, n)| (u, n))
        .collect();
    assert_eq!(reached.len(), 2);
    assert!(!reached.contains_key(&other));
    assert_eq!(
        reached[&named],
        Notice::SecurityIncident {
            notice_id: notice.id
        }
    );

    // To everyone: the restricted account too.
    let all = SecurityNotice {
        id: Uuid::now_v7(),
        everyone: true,
        ..notice
    };
    store.record_security_notice(&all, &[]).await.unwrap();
    let broadcast = Broadcast::Security { notice_id: all.id };
    assert_eq!(drain(&store, &broadcast, 10).await, 3);
    // A notice that is gone cannot be fanned out.
    let gone = Broadcast::Security {
        notice_id: Uuid::now_v7(),
    };
    assert_eq!(store.fan_out(&gone, 10).await.unwrap(), None);
}

async fn racing_fan_outs_never_notify_anyone_twice(store: Store, _: &TestDatabase) {
    let mut users = Vec::new();
    for _ in 0..40 {
        users.push(verified_account(&store, email(), Locale::En).await);
    }
    let broadcast = Broadcast::Policy {
        version: "v1".into(),
    };
    store.publish_policy(&version("v1")).await.unwrap();
    // Two runs at once (a rescued fan-out while the first still runs).
    let (a, b) = tokio::join!(drain(&store, &broadcast, 4), drain(&store, &broadcast, 4));
    assert_eq!(a + b, 40);
    let reached = queued_notices(&store).await;
    assert_eq!(reached.len(), 40);
    let mut ids: Vec<UserId> = reached.into_iter().map(|(_, u, _)| u).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
}

async fn an_erased_account_leaves_no_notice_rows(store: Store, _: &TestDatabase) {
    let user = verified_account(&store, email(), Locale::En).await;
    let notice = SecurityNotice {
        id: Uuid::now_v7(),
        subject: LocalizedText::same("Incident"),
        body: LocalizedText::same("Details"),
        everyone: false,
        created_at: Utc::now(),
        job_id: None,
    };
    store
        .record_security_notice(&notice, &[user])
        .await
        .unwrap();
    let broadcast = Broadcast::Security {
        notice_id: notice.id,
    };
    assert_eq!(drain(&store, &broadcast, 10).await, 1);
    store.delete_account(user).await.unwrap();
    assert!(store.erase_account_rows(user).await.unwrap());
    assert_eq!(store.recipients(&broadcast).await.unwrap(), 0);
    // The notice itself stays, as the record of what was sent and when.
    assert!(store.security_notice(notice.id).await.unwrap().is_some());
}
