//! Accounts and sessions, each behaviour on PostgreSQL and SQLite.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{NaiveDate, TimeDelta, Utc};
use kiln_jobs::UserId;
use kiln_store::{
    Store,
    accounts::{CodeCheck, Identifier, MAX_CODE_TRIES, NewCode, NewUser, UserCreated},
    credits::VerificationGrants,
    testing::TestDatabase,
};
use std::time::{Duration, Instant};
use uuid::Uuid;

kiln_store::both_databases!(
    a_user_signs_in_by_email_or_phone,
    an_email_or_phone_is_taken_once,
    a_referral_code_must_exist,
    a_session_lives_until_revoked_or_expired,
    a_remembered_session_still_ends_at_its_expiry,
    a_session_looked_up_lately_is_answered_from_memory,
    a_session_revoked_by_another_process_stops_working_here,
    a_code_verifies_its_account_once,
    a_code_dies_after_five_wrong_tries,
    an_expired_code_is_refused_and_spends_nothing,
    a_new_code_replaces_the_old_one,
    concurrent_guesses_use_a_code_once,
    the_operator_role_is_granted_and_revoked_by_address,
    a_code_for_a_new_address_moves_it_in_when_verified,
    a_new_address_taken_meanwhile_changes_nothing,
    restriction_is_set_and_lifted_once,
    accounts_stored_in_the_clear_are_sealed_once,
    a_store_with_other_keys_is_refused,
);

fn user(identifier: Identifier, code: &str) -> NewUser {
    NewUser {
        identifier,
        password_hash: "$2b$04$hash".into(),
        birth_date: NaiveDate::from_ymd_opt(1990, 12, 10).unwrap(),
        referral_code: code.into(),
        referred_by_code: None,
        locale: Default::default(),
    }
}

async fn created(store: &Store, user: NewUser) -> UserId {
    match store.create_user(user).await.unwrap() {
        UserCreated::Created(id) => id,
        other => panic!("expected a new account, got {other:?}"),
    }
}

fn email(e: &str) -> Identifier {
    Identifier::Email(e.into())
}

async fn a_user_signs_in_by_email_or_phone(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let bob = created(
        &store,
        user(Identifier::Phone("+15005550006".into()), "BOB1"),
    )
    .await;

    let login = store
        .login_record(&email("ada@example.com"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(login.user_id, ada);
    assert_eq!(login.password_hash, "$2b$04$hash");
    let login = store
        .login_record(&Identifier::Phone("+15005550006".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(login.user_id, bob);
    assert!(
        store
            .login_record(&email("nobody@example.com"))
            .await
            .unwrap()
            .is_none()
    );

    let contacts = store.contacts(ada).await.unwrap().unwrap();
    assert_eq!(contacts.email.as_deref(), Some("ada@example.com"));
    assert_eq!(contacts.phone, None);
    let contacts = store.contacts(bob).await.unwrap().unwrap();
    assert_eq!(contacts.phone.as_deref(), Some("+15005550006"));
    assert!(
        store
            .contacts(UserId(Uuid::now_v7()))
            .await
            .unwrap()
            .is_none()
    );
}

async fn an_email_or_phone_is_taken_once(store: Store, _: &TestDatabase) {
    created(&store, user(email("ada@example.com"), "ADA1")).await;
    let again = store
        .create_user(user(email("ada@example.com"), "ADA2"))
        .await;
    assert_eq!(again.unwrap(), UserCreated::Taken);
    created(
        &store,
        user(Identifier::Phone("+15005550006".into()), "BOB1"),
    )
    .await;
    let again = store
        .create_user(user(Identifier::Phone("+15005550006".into()), "BOB2"))
        .await;
    assert_eq!(again.unwrap(), UserCreated::Taken);
}

async fn a_referral_code_must_exist(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    assert_eq!(
        store.referral_code(ada).await.unwrap().as_deref(),
        Some("ADA1")
    );
    assert_eq!(
        store.referral_code(UserId(Uuid::now_v7())).await.unwrap(),
        None
    );
    let referred = NewUser {
        referred_by_code: Some("ADA1".into()),
        ..user(email("bob@example.com"), "BOB1")
    };
    created(&store, referred).await;
    let unknown = NewUser {
        referred_by_code: Some("NOPE".into()),
        ..user(email("eve@example.com"), "EVE1")
    };
    let outcome = store.create_user(unknown).await;
    assert_eq!(outcome.unwrap(), UserCreated::UnknownReferral);
    assert!(
        store
            .login_record(&email("eve@example.com"))
            .await
            .unwrap()
            .is_none(),
        "a refused sign-up leaves no account"
    );
}

async fn a_session_lives_until_revoked_or_expired(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    store.create_session(ada, "live", tomorrow).await.unwrap();
    store
        .create_session(ada, "expired", Utc::now() - TimeDelta::seconds(1))
        .await
        .unwrap();

    assert_eq!(store.session_user("live").await.unwrap(), Some(ada));
    assert_eq!(store.session_user("expired").await.unwrap(), None);
    assert_eq!(store.session_user("unknown").await.unwrap(), None);

    assert!(store.revoke_session("live").await.unwrap());
    assert!(
        !store.revoke_session("live").await.unwrap(),
        "a session is revoked once"
    );
    assert_eq!(store.session_user("live").await.unwrap(), None);
}

/// The store remembers sessions (60 s in the test kit, as by default), but
/// never past the session's own end.
async fn a_remembered_session_still_ends_at_its_expiry(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let ends = Utc::now() + TimeDelta::milliseconds(1500);
    store.create_session(ada, "short", ends).await.unwrap();
    assert_eq!(store.session_user("short").await.unwrap(), Some(ada));
    let wait = (ends - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50);
    tokio::time::sleep(wait).await;
    assert_eq!(
        store.session_user("short").await.unwrap(),
        None,
        "a session past its expiry is refused, remembered or not"
    );
}

/// Another `kiln serve` process (here: a second store on the same
/// database) logs the session out: this process, which remembered it for
/// 60 s, refuses it as soon as the revocation's notification arrives. On
/// SQLite there is one process, and the revoking store forgets at once.
async fn a_session_revoked_by_another_process_stops_working_here(store: Store, db: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    store.create_session(ada, "live", tomorrow).await.unwrap();
    until_listening(&store).await;
    assert_eq!(store.session_user("live").await.unwrap(), Some(ada));
    if !db.is_postgres() {
        assert!(store.revoke_session("live").await.unwrap());
        assert_eq!(store.session_user("live").await.unwrap(), None);
        return;
    }
    let other = kiln_store::connect(&kiln_store::ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: Duration::from_secs(60),
        pii: store.pii(),
    })
    .await
    .unwrap();
    assert_eq!(other.session_user("live").await.unwrap(), Some(ada));
    assert!(other.revoke_session("live").await.unwrap());
    assert_eq!(
        other.session_user("live").await.unwrap(),
        None,
        "the revoking process forgets at once"
    );
    // Far inside the 60 s this store would otherwise trust the token.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.session_user("live").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "a session revoked by another process was still trusted after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the cache is for: a token looked up lately costs no query. Shown by
/// revoking behind the store's back (a raw UPDATE, which no process hears):
/// the store still answers from memory, one without memory does not.
async fn a_session_looked_up_lately_is_answered_from_memory(store: Store, db: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let tomorrow = Utc::now() + TimeDelta::days(1);
    store.create_session(ada, "live", tomorrow).await.unwrap();
    until_listening(&store).await;
    assert_eq!(store.session_user("live").await.unwrap(), Some(ada));
    let revoke = "UPDATE sessions SET revoked_at = created_at WHERE token_hash = 'live'";
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query(revoke).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query(revoke).execute(&pool).await.unwrap();
        pool.close().await;
    }
    assert_eq!(store.session_user("live").await.unwrap(), Some(ada));
    let forgetful = kiln_store::connect(&kiln_store::ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: Duration::ZERO,
        pii: store.pii(),
    })
    .await
    .unwrap();
    assert_eq!(forgetful.session_user("live").await.unwrap(), None);
}

/// A Postgres store remembers nothing until its listener is up.
async fn until_listening(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.hears_every_process() {
        assert!(Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn code(user_id: UserId, hash: &str, valid_for: TimeDelta) -> NewCode {
    NewCode {
        id: Uuid::now_v7(),
        user_id,
        code_hash: hash.into(),
        expires_at: Utc::now() + valid_for,
        contact: None,
    }
}

async fn verified(store: &Store, who: &str) -> bool {
    store
        .login_record(&email(who))
        .await
        .unwrap()
        .unwrap()
        .verified
}

async fn a_code_verifies_its_account_once(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let bob = created(&store, user(email("bob@example.com"), "BOB1")).await;
    assert!(
        !verified(&store, "ada@example.com").await,
        "new accounts are unverified"
    );
    assert_eq!(
        store
            .check_code(ada, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode,
        "no code issued yet"
    );
    let issued = code(ada, "right", TimeDelta::minutes(10));
    store.issue_code(issued.clone()).await.unwrap();
    assert_eq!(
        store
            .check_code(bob, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode,
        "ada's code is not bob's"
    );
    assert_eq!(
        store
            .check_code(ada, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::Verified
    );
    assert!(verified(&store, "ada@example.com").await);
    assert!(!verified(&store, "bob@example.com").await);
    assert_eq!(
        store
            .check_code(ada, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode,
        "a used code is dead"
    );
    let codes = store.codes(ada).await.unwrap();
    assert_eq!(codes.len(), 1);
    assert_eq!(codes[0].id, issued.id);
    assert_eq!(codes[0].tries, 0);
    assert!(codes[0].used_at.is_some());
    assert!(!codes[0].is_live(Utc::now()));
}

async fn a_code_dies_after_five_wrong_tries(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    store
        .issue_code(code(ada, "right", TimeDelta::minutes(10)))
        .await
        .unwrap();
    for left in (0..MAX_CODE_TRIES).rev() {
        assert_eq!(
            store
                .check_code(ada, "wrong", VerificationGrants::default())
                .await
                .unwrap(),
            CodeCheck::Wrong { tries_left: left }
        );
    }
    assert_eq!(
        store
            .check_code(ada, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode,
        "after the fifth wrong try even the right code is refused"
    );
    assert!(!verified(&store, "ada@example.com").await);
    let codes = store.codes(ada).await.unwrap();
    assert_eq!(codes[0].tries, MAX_CODE_TRIES);
    assert!(!codes[0].is_live(Utc::now()));
}

async fn an_expired_code_is_refused_and_spends_nothing(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    store
        .issue_code(code(ada, "right", TimeDelta::milliseconds(300)))
        .await
        .unwrap();
    assert!(store.codes(ada).await.unwrap()[0].is_live(Utc::now()));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        store
            .check_code(ada, "right", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode
    );
    assert_eq!(
        store
            .check_code(ada, "wrong", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::NoLiveCode
    );
    let codes = store.codes(ada).await.unwrap();
    assert_eq!(codes[0].tries, 0);
    assert!(codes[0].used_at.is_none());
    assert!(!verified(&store, "ada@example.com").await);
}

async fn a_new_code_replaces_the_old_one(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    store
        .issue_code(code(ada, "first", TimeDelta::minutes(10)))
        .await
        .unwrap();
    assert_eq!(
        store
            .check_code(ada, "wrong", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::Wrong {
            tries_left: MAX_CODE_TRIES - 1
        }
    );
    let second = code(ada, "second", TimeDelta::minutes(10));
    store.issue_code(second.clone()).await.unwrap();
    let codes = store.codes(ada).await.unwrap();
    assert_eq!(codes.len(), 1, "one code per user");
    assert_eq!(codes[0].id, second.id);
    assert_eq!(codes[0].tries, 0);
    assert_eq!(
        store
            .check_code(ada, "first", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::Wrong {
            tries_left: MAX_CODE_TRIES - 1
        }
    );
    assert_eq!(
        store
            .check_code(ada, "second", VerificationGrants::default())
            .await
            .unwrap(),
        CodeCheck::Verified
    );
}

async fn concurrent_guesses_use_a_code_once(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    store
        .issue_code(code(ada, "right", TimeDelta::minutes(10)))
        .await
        .unwrap();
    let guesses: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let guess = if i % 2 == 0 { "right" } else { "wrong" };
            tokio::spawn(async move {
                store
                    .check_code(ada, guess, VerificationGrants::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for g in guesses {
        outcomes.push(g.await.unwrap());
    }
    let wins = outcomes
        .iter()
        .filter(|o| **o == CodeCheck::Verified)
        .count();
    assert_eq!(wins, 1, "{outcomes:?}");
    let codes = store.codes(ada).await.unwrap();
    assert!(codes[0].tries <= MAX_CODE_TRIES, "{codes:?}");
}

async fn the_operator_role_is_granted_and_revoked_by_address(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA1")).await;
    let bob = created(
        &store,
        user(Identifier::Phone("+15005550006".into()), "BOB1"),
    )
    .await;
    assert!(!store.is_operator(ada).await.unwrap());
    assert_eq!(
        store
            .set_operator(&email("ada@example.com"), true)
            .await
            .unwrap(),
        Some(ada)
    );
    assert!(store.is_operator(ada).await.unwrap());
    assert!(!store.is_operator(bob).await.unwrap(), "only that account");
    assert_eq!(
        store
            .set_operator(&Identifier::Phone("+15005550006".into()), true)
            .await
            .unwrap(),
        Some(bob)
    );
    store
        .set_operator(&email("ada@example.com"), false)
        .await
        .unwrap();
    assert!(!store.is_operator(ada).await.unwrap());
    assert_eq!(
        store
            .set_operator(&email("nobody@example.com"), true)
            .await
            .unwrap(),
        None
    );
}

async fn a_code_for_a_new_address_moves_it_in_when_verified(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA")).await;
    let grants = VerificationGrants::default();
    let new = email("ada.new@example.com");
    store
        .issue_code(NewCode {
            contact: Some(new.clone()),
            ..code(ada, "h1", TimeDelta::minutes(10))
        })
        .await
        .unwrap();
    let codes = store.codes(ada).await.unwrap();
    assert_eq!(codes[0].contact, Some(new.clone()));
    assert!(
        !format!("{:?}", codes[0]).contains("ada.new"),
        "Debug hides the address"
    );
    // Unconfirmed, it changes nothing.
    let profile = store.profile(ada).await.unwrap().unwrap();
    assert_eq!(profile.email.as_deref(), Some("ada@example.com"));

    assert_eq!(
        store.check_code(ada, "h1", grants).await.unwrap(),
        CodeCheck::Verified
    );
    let profile = store.profile(ada).await.unwrap().unwrap();
    assert_eq!(profile.email.as_deref(), Some("ada.new@example.com"));
    assert_eq!(profile.phone, None);
    assert!(
        store
            .login_record(&email("ada@example.com"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.login_record(&new).await.unwrap().unwrap().user_id,
        ada
    );

    // A phone joins the email instead of replacing it.
    let phone = Identifier::Phone("+4915112345678".into());
    store
        .issue_code(NewCode {
            contact: Some(phone.clone()),
            ..code(ada, "h2", TimeDelta::minutes(10))
        })
        .await
        .unwrap();
    assert_eq!(
        store.check_code(ada, "h2", grants).await.unwrap(),
        CodeCheck::Verified
    );
    let profile = store.profile(ada).await.unwrap().unwrap();
    assert_eq!(profile.email.as_deref(), Some("ada.new@example.com"));
    assert_eq!(profile.phone.as_deref(), Some("+4915112345678"));
}

async fn a_new_address_taken_meanwhile_changes_nothing(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA")).await;
    store
        .issue_code(NewCode {
            contact: Some(email("shared@example.com")),
            ..code(ada, "h", TimeDelta::minutes(10))
        })
        .await
        .unwrap();
    let bob = created(&store, user(email("shared@example.com"), "BOB")).await;
    let grants = VerificationGrants::default();
    assert_eq!(
        store.check_code(ada, "h", grants).await.unwrap(),
        CodeCheck::AddressTaken
    );
    // The code is spent, Ada keeps her address, Bob his.
    assert_eq!(
        store.check_code(ada, "h", grants).await.unwrap(),
        CodeCheck::NoLiveCode
    );
    let profile = store.profile(ada).await.unwrap().unwrap();
    assert_eq!(profile.email.as_deref(), Some("ada@example.com"));
    assert_eq!(
        store
            .login_record(&email("shared@example.com"))
            .await
            .unwrap()
            .unwrap()
            .user_id,
        bob
    );
}

async fn restriction_is_set_and_lifted_once(store: Store, _: &TestDatabase) {
    let ada = created(&store, user(email("ada@example.com"), "ADA")).await;
    assert!(!store.is_restricted(ada).await.unwrap());
    assert!(store.set_restricted(ada, true).await.unwrap());
    assert!(
        !store.set_restricted(ada, true).await.unwrap(),
        "already restricted"
    );
    assert!(store.is_restricted(ada).await.unwrap());
    let at = store.profile(ada).await.unwrap().unwrap().restricted_at;
    assert!(at.is_some());
    assert!(store.set_restricted(ada, false).await.unwrap());
    assert!(!store.set_restricted(ada, false).await.unwrap());
    assert!(!store.is_restricted(ada).await.unwrap());
    assert_eq!(
        store.profile(ada).await.unwrap().unwrap().restricted_at,
        None
    );
}

/// A row as kiln wrote it before addresses were sealed: the plain address
/// in the (then) address column, nothing sealed.
async fn insert_legacy_user(db: &TestDatabase, email: &str) {
    use sqlx::Connection;
    let id = Uuid::now_v7();
    let sql =
        "INSERT INTO users (id, email_index, password_hash, birth_date, referral_code, created_at)
               VALUES ($1, $2, '$2b$04$hash', $3, $4, $5)";
    let birth = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap();
    if db.is_postgres() {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(sql)
            .bind(id)
            .bind(email)
            .bind(birth)
            .bind(id.simple().to_string())
            .bind(Utc::now())
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(email)
            .bind(birth.to_string())
            .bind(id.simple().to_string())
            .bind(Utc::now().timestamp_millis())
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn accounts_stored_in_the_clear_are_sealed_once(store: Store, db: &TestDatabase) {
    insert_legacy_user(db, "old@example.com").await;
    created(&store, user(email("new@example.com"), "NEW")).await;
    // Before: the old account cannot be found by its address.
    assert!(
        store
            .login_record(&email("old@example.com"))
            .await
            .unwrap()
            .is_none()
    );
    let mut batches = 0;
    let sealed = store
        .reseal_accounts(false, 1, |_, _| batches += 1)
        .await
        .unwrap();
    assert_eq!(sealed, 1, "only the account in the clear");
    assert_eq!(batches, 1, "only rows from before sealing are read");
    let old = store
        .login_record(&email("old@example.com"))
        .await
        .unwrap()
        .unwrap();
    let contacts = store.contacts(old.user_id).await.unwrap().unwrap();
    assert_eq!(contacts.email.as_deref(), Some("old@example.com"));
    assert_eq!(
        store.reseal_accounts(false, 10, |_, _| {}).await.unwrap(),
        0
    );
    // Everything is under the current key already.
    assert_eq!(store.reseal_accounts(true, 10, |_, _| {}).await.unwrap(), 0);
    assert_eq!(store.count_accounts().await.unwrap(), 2);
}

async fn a_store_with_other_keys_is_refused(store: Store, db: &TestDatabase) {
    created(&store, user(email("ada@example.com"), "ADA")).await;
    let other = kiln_store::connect(&kiln_store::ConnectOptions {
        url: db.url.clone(),
        direct_url: None,
        pooler: Default::default(),
        max_connections: 2,
        wait: false,
        session_cache: Duration::ZERO,
        pii: std::sync::Arc::new(kiln_store::Pii::random()),
    })
    .await
    .unwrap();
    let refused = other.check_pii_keys().await.unwrap_err();
    assert!(
        refused.to_string().contains("another index key"),
        "{refused}"
    );
    assert!(matches!(
        other.migrate().await,
        Err(kiln_store::StoreError::KeysMismatch(_))
    ));
}
