//! Credit purchases on PostgreSQL and SQLite: a paid order grants its
//! credits once, however often or concurrently the notification arrives,
//! and only to the account it was opened for.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use chrono::{TimeDelta, Utc};
use kiln_jobs::{OrderId, UserId};
use kiln_store::{
    Store,
    credits::{CreditBalance, EntryKind},
    orders::{NewOrder, OrderStatus, Payment, PaymentNotification, PaymentOutcome},
    testing::{TestDatabase, account},
};
use uuid::Uuid;

kiln_store::both_databases!(
    a_paid_order_grants_its_credits_once,
    concurrent_redeliveries_grant_once,
    a_second_event_for_a_paid_order_changes_nothing,
    another_accounts_order_is_not_paid,
    events_without_a_payment_are_recorded_once,
    orders_list_newest_first,
);

async fn open(store: &Store, user: UserId, credits: u32) -> OrderId {
    let id = OrderId(Uuid::new_v4());
    store
        .open_order(&NewOrder {
            id,
            user,
            provider: "dev".into(),
            pack: "small".into(),
            credits,
        })
        .await
        .unwrap();
    id
}

fn paid(event_id: &str, order: OrderId, account: UserId) -> PaymentNotification {
    PaymentNotification {
        provider: "dev".into(),
        event_id: event_id.into(),
        event_type: "order.paid".into(),
        payment: Some(Payment {
            order,
            account,
            transaction_id: format!("txn_{event_id}"),
            amount: 500,
            currency: "USD".into(),
            paid_at: Utc::now() - TimeDelta::seconds(3),
        }),
    }
}

async fn assert_balance(store: &Store, user: UserId, expected: u64) {
    let entries = store.credit_entries(user, None, 1000).await.unwrap();
    let sums = store.credit_balance(user).await.unwrap();
    assert_eq!(CreditBalance::of_entries(&entries), sums, "{entries:?}");
    assert_eq!(sums.balance, expected);
}

async fn a_paid_order_grants_its_credits_once(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    let order = open(&store, ada, 100).await;
    store.set_order_transaction(order, "txn_1").await.unwrap();
    let open_order = store.order(order).await.unwrap().unwrap();
    assert_eq!(open_order.status, OrderStatus::Open);
    assert_eq!(open_order.transaction_id.as_deref(), Some("txn_1"));

    let n = paid("evt_1", order, ada);
    assert_eq!(
        store.apply_payment(&n).await.unwrap(),
        PaymentOutcome::Granted {
            user: ada,
            credits: 100
        }
    );
    for _ in 0..2 {
        assert_eq!(
            store.apply_payment(&n).await.unwrap(),
            PaymentOutcome::Duplicate
        );
    }
    assert_balance(&store, ada, 100).await;
    let entries = store.credit_entries(ada, None, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, EntryKind::Purchase);
    assert_eq!(entries[0].order_id, Some(order.0));
    assert_eq!(entries[0].reason, "purchase:small");

    let record = store.order(order).await.unwrap().unwrap();
    assert_eq!(record.status, OrderStatus::Paid);
    assert_eq!(record.transaction_id.as_deref(), Some("txn_evt_1"));
    assert_eq!(record.amount, Some(500));
    assert_eq!(record.currency.as_deref(), Some("USD"));
    let paid_at = record.paid_at.unwrap();
    assert!(
        (Utc::now() - paid_at).num_seconds() >= 2,
        "the merchant's time is kept"
    );
}

async fn concurrent_redeliveries_grant_once(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    let order = open(&store, ada, 40).await;
    let n = paid("evt_concurrent", order, ada);
    let tries = (0..8).map(|_| {
        let (store, n) = (store.clone(), n.clone());
        tokio::spawn(async move { store.apply_payment(&n).await.unwrap() })
    });
    let outcomes = futures::future::join_all(tries).await;
    let granted = outcomes
        .iter()
        .filter(|o| matches!(o.as_ref().unwrap(), PaymentOutcome::Granted { .. }))
        .count();
    assert_eq!(granted, 1, "{outcomes:?}");
    assert_balance(&store, ada, 40).await;
}

async fn a_second_event_for_a_paid_order_changes_nothing(store: Store, _: &TestDatabase) {
    let ada = account(&store).await;
    let order = open(&store, ada, 10).await;
    store
        .apply_payment(&paid("evt_a", order, ada))
        .await
        .unwrap();
    assert_eq!(
        store
            .apply_payment(&paid("evt_b", order, ada))
            .await
            .unwrap(),
        PaymentOutcome::AlreadyPaid
    );
    assert_balance(&store, ada, 10).await;
    let record = store.order(order).await.unwrap().unwrap();
    assert_eq!(record.transaction_id.as_deref(), Some("txn_evt_a"));
}

async fn another_accounts_order_is_not_paid(store: Store, _: &TestDatabase) {
    let (ada, bob) = (account(&store).await, account(&store).await);
    let order = open(&store, ada, 10).await;
    assert_eq!(
        store
            .apply_payment(&paid("evt_x", order, bob))
            .await
            .unwrap(),
        PaymentOutcome::UnknownOrder
    );
    let unknown = OrderId(Uuid::new_v4());
    assert_eq!(
        store
            .apply_payment(&paid("evt_y", unknown, ada))
            .await
            .unwrap(),
        PaymentOutcome::UnknownOrder
    );
    assert_balance(&store, ada, 0).await;
    assert_balance(&store, bob, 0).await;
    assert_eq!(
        store.order(order).await.unwrap().unwrap().status,
        OrderStatus::Open
    );
    // The right account's own notification still pays it.
    assert!(matches!(
        store
            .apply_payment(&paid("evt_z", order, ada))
            .await
            .unwrap(),
        PaymentOutcome::Granted { .. }
    ));
}

async fn events_without_a_payment_are_recorded_once(store: Store, _: &TestDatabase) {
    let n = PaymentNotification {
        provider: "paddle".into(),
        event_id: "evt_created".into(),
        event_type: "transaction.created".into(),
        payment: None,
    };
    assert_eq!(
        store.apply_payment(&n).await.unwrap(),
        PaymentOutcome::Ignored
    );
    assert_eq!(
        store.apply_payment(&n).await.unwrap(),
        PaymentOutcome::Duplicate
    );
    // Event ids are per provider.
    let other = PaymentNotification {
        provider: "dev".into(),
        ..n
    };
    assert_eq!(
        store.apply_payment(&other).await.unwrap(),
        PaymentOutcome::Ignored
    );
}

async fn orders_list_newest_first(store: Store, _: &TestDatabase) {
    let (ada, bob) = (account(&store).await, account(&store).await);
    let first = open(&store, ada, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = open(&store, ada, 2).await;
    open(&store, bob, 3).await;
    let ids: Vec<OrderId> = store
        .orders(ada, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, vec![second, first]);
}
