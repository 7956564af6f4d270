//! Credit purchases: an order is opened at checkout with its pack's
//! credits fixed, and paid by the merchant of record's signed notification.
//! Each notification is applied once by its event id, and each order grants
//! its credits once (a `purchase` entry, unique per order), in the same
//! transaction that marks it paid.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{OrderId, UserId};

use crate::StoreError;

/// The order a checkout opens.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: OrderId,
    pub user: UserId,
    /// The payments provider that will take the money (`paddle`, `dev`).
    pub provider: String,
    pub pack: String,
    /// What the order grants once paid, fixed now: a price change later
    /// does not change what was bought.
    pub credits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Open,
    Paid,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Open => "open",
            OrderStatus::Paid => "paid",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "open" => Some(OrderStatus::Open),
            "paid" => Some(OrderStatus::Paid),
            _ => None,
        }
    }
}

/// An order as stored. No personal data: `user` is the only link to a
/// person, and account deletion clears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub user: Option<UserId>,
    pub provider: String,
    pub pack: String,
    pub credits: u32,
    pub status: OrderStatus,
    pub transaction_id: Option<String>,
    /// As paid, in the currency's minor unit.
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// A payment the merchant says went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub order: OrderId,
    /// The account the checkout was for, as the notification repeats it:
    /// an order is paid only when it matches.
    pub account: UserId,
    pub transaction_id: String,
    pub amount: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
}

/// One verified notification from a payments provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotification {
    pub provider: String,
    /// The provider's id for this notification; every redelivery repeats it.
    pub event_id: String,
    pub event_type: String,
    /// Set when the notification says an order was paid.
    pub payment: Option<Payment>,
}

/// What applying a notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The order is paid and its credits granted now.
    Granted { user: UserId, credits: u32 },
    /// This event id was applied before; nothing changed.
    Duplicate,
    /// Recorded; not a payment kiln acts on.
    Ignored,
    /// The order was already paid (by another event); nothing changed.
    AlreadyPaid,
    /// No open order with that id for that account (or its account was
    /// deleted): recorded, nothing granted.
    UnknownOrder,
}

impl PaymentOutcome {
    /// Every name [`PaymentOutcome::as_str`] gives.
    pub const NAMES: [&'static str; 5] = [
        "granted",
        "duplicate",
        "ignored",
        "already_paid",
        "unknown_order",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Granted { .. } => "granted",
            PaymentOutcome::Duplicate => "duplicate",
            PaymentOutcome::Ignored => "ignored",
            PaymentOutcome::AlreadyPaid => "already_paid",
            PaymentOutcome::UnknownOrder => "unknown_order",
        }
    }
}

/// The reason of a purchase entry.
pub fn purchase_reason(pack: &str) -> String {
    format!("purchase:{pack}")
}

#[async_trait]
pub trait Orders: Send + Sync {
    async fn open_order(&self, order: &NewOrder) -> Result<(), StoreError>;
    /// Records the merchant's id for the order's payment, once known.
    async fn set_order_transaction(
        &self,
        order: OrderId,
        transaction_id: &str,
    ) -> Result<(), StoreError>;
    async fn order(&self, order: OrderId) -> Result<Option<Order>, StoreError>;
    /// The account's orders, newest first.
    async fn orders(&self, user: UserId, limit: u32) -> Result<Vec<Order>, StoreError>;
    /// Applies a notification once: records its event id and, for a
    /// payment of an open order of that account, marks the order paid and
    /// grants its credits, all in one transaction.
    async fn apply_payment(
        &self,
        notification: &PaymentNotification,
    ) -> Result<PaymentOutcome, StoreError>;
}
