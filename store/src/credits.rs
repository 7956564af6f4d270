//! The credits ledger: every credit given, bought, held, spent or given
//! back is an append-only entry, and each account keeps their running
//! sums, so a balance is never overdrawn and every purchase stays on
//! record. Reservations and their settlement are not written here but by the
//! database itself, in the statement that enqueues or ends a job (triggers
//! in `migrations/*/0013_credits.sql`), so no write path can skip one or do
//! one twice.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::StoreError;

/// What an entry does; its `amount` is always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits given (sign-up, referral): added to the balance.
    Grant,
    /// Credits bought: added to the balance.
    Purchase,
    /// Held for a job at enqueue: from the balance to `reserved`.
    Reserve,
    /// The job succeeded: its reservation is spent.
    Charge,
    /// The job failed, was blocked or cancelled: its reservation goes back
    /// to the balance.
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Purchase => "purchase",
            EntryKind::Reserve => "reserve",
            EntryKind::Charge => "charge",
            EntryKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        Some(match s {
            "grant" => EntryKind::Grant,
            "purchase" => EntryKind::Purchase,
            "reserve" => EntryKind::Reserve,
            "charge" => EntryKind::Charge,
            "refund" => EntryKind::Refund,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditEntry {
    /// Increasing: entries page by it, newest first.
    pub id: i64,
    pub kind: EntryKind,
    pub amount: u64,
    /// `signup`, `referral`, `referral:<referred user>`, or the job's kind.
    pub reason: String,
    pub job_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// An account's sums: what it may spend, and what its unfinished jobs hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditBalance {
    pub balance: u64,
    pub reserved: u64,
}

impl CreditBalance {
    /// The sums the entries add up to (newest first or not): what
    /// [`Credits::credit_balance`] must always equal.
    pub fn of_entries<'a>(entries: impl IntoIterator<Item = &'a CreditEntry>) -> CreditBalance {
        let (mut balance, mut reserved) = (0i128, 0i128);
        for e in entries {
            let a = i128::from(e.amount);
            match e.kind {
                EntryKind::Grant | EntryKind::Purchase => balance += a,
                EntryKind::Reserve => {
                    balance -= a;
                    reserved += a;
                }
                EntryKind::Charge => reserved -= a,
                EntryKind::Refund => {
                    reserved -= a;
                    balance += a;
                }
            }
        }
        CreditBalance {
            balance: balance.max(0) as u64,
            reserved: reserved.max(0) as u64,
        }
    }
}

/// What a first verification grants (`credits.signup_grant`,
/// `credits.referral_bonus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerificationGrants {
    /// To every account, once, when it is first verified.
    pub signup: u32,
    /// To an account that signed up with a referral code and to its
    /// referrer, once each, on that first verification.
    pub referral_bonus: u32,
}

/// The grant reasons a verification writes; one of each per account.
pub const SIGNUP_REASON: &str = "signup";
pub const REFERRAL_REASON: &str = "referral";

/// The reason of a referrer's bonus for bringing `referred`.
pub fn referrer_reason(referred: UserId) -> String {
    format!("referral:{referred}")
}

#[async_trait]
pub trait Credits: Send + Sync {
    /// The account's sums (zero for an account that has none).
    async fn credit_balance(&self, user: UserId) -> Result<CreditBalance, StoreError>;
    /// The account's entries, newest first, older than `before` when given.
    async fn credit_entries(
        &self,
        user: UserId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<CreditEntry>, StoreError>;
    /// Adds `amount` to the balance, once per `reason` and account: false
    /// (and nothing written) when that reason was granted before or the
    /// amount is 0.
    async fn grant_credits(
        &self,
        user: UserId,
        amount: u32,
        reason: &str,
    ) -> Result<bool, StoreError>;
}
