//! The access and audit log: what happened to an account, when, and from
//! which IP and user agent. Entries are appended, shown to their user
//! (`GET /v1/me/access-log`) and removed only by retention, never before
//! they are 180 days old.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;

use crate::StoreError;

/// What happened. Stored as its `as_str` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessEvent {
    /// An account was created.
    Register,
    /// Someone tried to register an address that has an account.
    RegistrationAttempt,
    /// The account proved it holds its address.
    Verify,
    /// A wrong code was tried for the account.
    VerifyFailed,
    /// A session was opened.
    Login,
    /// A wrong password was tried (for an account, or for no account).
    LoginFailed,
    /// A session was closed.
    Logout,
    /// A session was used from an IP the account had not used before.
    NewIp,
    /// The operator role was granted to the account (`kiln user`).
    OperatorGranted,
    /// The operator role was taken from the account.
    OperatorRevoked,
    /// The owner asked to replace the account's email or phone; a code
    /// went to the new address.
    ContactChangeRequested,
    /// The new address was confirmed and replaced the old.
    ContactChanged,
    /// The owner restricted the account's processing.
    Restricted,
    /// The owner lifted the restriction.
    Unrestricted,
    /// The owner deleted the account (the entry outlives it, detached).
    DeletionRequested,
    /// The owner acknowledged a policy version.
    PolicyAcknowledged,
    /// The owner created or replaced the account's webhook signing secret.
    WebhookSecretRotated,
    /// An operator published a policy version (the operator's entry).
    PolicyPublished,
    /// An operator sent a security notice (the operator's entry).
    SecurityNoticeSent,
    /// An operator read one job in full, payload included.
    OperatorJobRead,
    /// An operator retried a job.
    OperatorJobRetried,
    /// An operator discarded a job (it ends `failed`, never run again).
    OperatorJobDiscarded,
    /// An operator cancelled a job.
    OperatorJobCancelled,
    /// An operator retried, discarded or cancelled the jobs a filter matched.
    OperatorBulkAction,
    /// An operator paused a queue.
    OperatorQueuePaused,
    /// An operator resumed a queue.
    OperatorQueueResumed,
    /// An operator set or cleared a queue's concurrency limit.
    OperatorQueueConcurrency,
}

impl AccessEvent {
    /// Every event, to read a stored name back.
    pub const ALL: [AccessEvent; 27] = [
        AccessEvent::Register,
        AccessEvent::RegistrationAttempt,
        AccessEvent::Verify,
        AccessEvent::VerifyFailed,
        AccessEvent::Login,
        AccessEvent::LoginFailed,
        AccessEvent::Logout,
        AccessEvent::NewIp,
        AccessEvent::OperatorGranted,
        AccessEvent::OperatorRevoked,
        AccessEvent::ContactChangeRequested,
        AccessEvent::ContactChanged,
        AccessEvent::Restricted,
        AccessEvent::Unrestricted,
        AccessEvent::DeletionRequested,
        AccessEvent::PolicyAcknowledged,
        AccessEvent::WebhookSecretRotated,
        AccessEvent::PolicyPublished,
        AccessEvent::SecurityNoticeSent,
        AccessEvent::OperatorJobRead,
        AccessEvent::OperatorJobRetried,
        AccessEvent::OperatorJobDiscarded,
        AccessEvent::OperatorJobCancelled,
        AccessEvent::OperatorBulkAction,
        AccessEvent::OperatorQueuePaused,
        AccessEvent::OperatorQueueResumed,
        AccessEvent::OperatorQueueConcurrency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessEvent::Register => "register",
            AccessEvent::RegistrationAttempt => "registration_attempt",
            AccessEvent::Verify => "verify",
            AccessEvent::VerifyFailed => "verify_failed",
            AccessEvent::Login => "login",
            AccessEvent::LoginFailed => "login_failed",
            AccessEvent::Logout => "logout",
            AccessEvent::NewIp => "new_ip",
            AccessEvent::OperatorGranted => "operator_granted",
            AccessEvent::OperatorRevoked => "operator_revoked",
            AccessEvent::ContactChangeRequested => "contact_change_requested",
            AccessEvent::ContactChanged => "contact_changed",
            AccessEvent::Restricted => "restricted",
            AccessEvent::Unrestricted => "unrestricted",
            AccessEvent::DeletionRequested => "deletion_requested",
            AccessEvent::PolicyAcknowledged => "policy_acknowledged",
            AccessEvent::WebhookSecretRotated => "webhook_secret_rotated",
            AccessEvent::PolicyPublished => "policy_published",
            AccessEvent::SecurityNoticeSent => "security_notice_sent",
            AccessEvent::OperatorJobRead => "operator_job_read",
            AccessEvent::OperatorJobRetried => "operator_job_retried",
            AccessEvent::OperatorJobDiscarded => "operator_job_discarded",
            AccessEvent::OperatorJobCancelled => "operator_job_cancelled",
            AccessEvent::OperatorBulkAction => "operator_bulk_action",
            AccessEvent::OperatorQueuePaused => "operator_queue_paused",
            AccessEvent::OperatorQueueResumed => "operator_queue_resumed",
            AccessEvent::OperatorQueueConcurrency => "operator_queue_concurrency",
        }
    }

    pub fn parse(s: &str) -> Option<AccessEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Where a request came from, as the API saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// Increasing: entries page by it, newest first.
    pub id: i64,
    pub event: AccessEvent,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// What an operator's action touched (a job id, a queue, a filter and
    /// counts); never a payload. For a sign-in to the operator page,
    /// `{"via": "operator_page"}`. None for every other event.
    pub detail: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait AccessLog: Send + Sync {
    /// Appends an entry and answers its id; `user` is `None` for a failed
    /// login to an address with no account.
    async fn record_access(
        &self,
        user: Option<UserId>,
        event: AccessEvent,
        origin: &Origin,
    ) -> Result<i64, StoreError>;
    /// Appends an operator's action with what it touched (`detail`: ids,
    /// queue, filter, counts; never a payload) and answers its id.
    async fn record_audit(
        &self,
        operator: UserId,
        event: AccessEvent,
        origin: &Origin,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError>;
    /// A user's entries, newest first, older than `before` when given.
    async fn access_log(
        &self,
        user: UserId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AccessEntry>, StoreError>;
    /// Remembers that `user` was used from `ip`: true the first time.
    async fn note_ip(&self, user: UserId, ip: &str) -> Result<bool, StoreError>;
}
