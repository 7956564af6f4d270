//! The access log, on PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use kiln_store::{
    Store,
    access_log::{AccessEvent, Origin},
    testing::{TestDatabase, account},
};

kiln_store::both_databases!(
    entries_are_a_users_own_newest_first_and_paged,
    an_ip_is_new_once_per_account,
);

fn from(ip: &str) -> Origin {
    Origin {
        ip: Some(ip.to_owned()),
        user_agent: Some("curl/8.5.0".to_owned()),
    }
}

async fn entries_are_a_users_own_newest_first_and_paged(store: Store, _: &TestDatabase) {
    let (ada, bob) = (account(&store).await, account(&store).await);
    let events = [
        AccessEvent::Register,
        AccessEvent::Verify,
        AccessEvent::LoginFailed,
        AccessEvent::Login,
        AccessEvent::Logout,
    ];
    for event in events {
        store
            .record_access(Some(ada), event, &from("203.0.113.7"))
            .await
            .unwrap();
    }
    store
        .record_access(Some(bob), AccessEvent::Login, &from("198.51.100.1"))
        .await
        .unwrap();
    // A failed login to an address with no account belongs to no one.
    store
        .record_access(None, AccessEvent::LoginFailed, &Origin::default())
        .await
        .unwrap();

    let first = store.access_log(ada, None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.event).collect::<Vec<_>>(),
        [AccessEvent::Logout, AccessEvent::Login]
    );
    assert_eq!(first[0].ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(first[0].user_agent.as_deref(), Some("curl/8.5.0"));
    let rest = store.access_log(ada, Some(first[1].id), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.event).collect::<Vec<_>>(),
        [
            AccessEvent::LoginFailed,
            AccessEvent::Verify,
            AccessEvent::Register
        ]
    );
    let bobs = store.access_log(bob, None, 10).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].ip.as_deref(), Some("198.51.100.1"));
}

async fn an_ip_is_new_once_per_account(store: Store, _: &TestDatabase) {
    let (ada, bob) = (account(&store).await, account(&store).await);
    assert!(store.note_ip(ada, "203.0.113.7").await.unwrap());
    assert!(!store.note_ip(ada, "203.0.113.7").await.unwrap());
    assert!(store.note_ip(ada, "2001:db8::1").await.unwrap());
    assert!(store.note_ip(bob, "203.0.113.7").await.unwrap());
}
