//! The register of data-subject requests: every access, export,
//! correction, deletion and restriction an account's owner asks for, with
//! the date it is due (the policy answers within [`ANSWER_WITHIN_DAYS`])
//! and the date it was answered. Operators list the overdue ones; a gauge
//! counts them for an alert.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::{
    StoreError,
    codec::{Id, Time},
};

/// Days a request may take to be answered.
pub const ANSWER_WITHIN_DAYS: i64 = 30;

/// What the owner asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// To see the data kept about them.
    Access,
    /// A portable copy.
    Export,
    /// To correct their address.
    Correction,
    /// To delete the account.
    Deletion,
    /// To stop the processing of their data.
    Restriction,
}

impl RequestKind {
    pub const ALL: [RequestKind; 5] = [
        RequestKind::Access,
        RequestKind::Export,
        RequestKind::Correction,
        RequestKind::Deletion,
        RequestKind::Restriction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Export => "export",
            RequestKind::Correction => "correction",
            RequestKind::Deletion => "deletion",
            RequestKind::Restriction => "restriction",
        }
    }

    pub fn parse(s: &str) -> Option<RequestKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A request as the register keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRequest {
    pub id: Uuid,
    /// None once the account was erased.
    pub user: Option<UserId>,
    pub kind: RequestKind,
    /// The job that answers it (an export, an account purge).
    pub job_id: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl SubjectRequest {
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        self.completed_at.is_none() && self.due_at < now
    }
}

/// A request to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRequest {
    pub user: UserId,
    pub kind: RequestKind,
    pub job_id: Option<Uuid>,
    /// Answered as it was made (a restriction takes effect at once).
    pub answered: bool,
}

#[async_trait]
pub trait SubjectRequests: Send + Sync + 'static {
    /// Records a request, due [`ANSWER_WITHIN_DAYS`] from now. An access
    /// request is recorded once a day per account (reading one's account
    /// again that day is the same request), and a request a job answers
    /// once per job (a retried enqueue, the job itself making sure): None
    /// when one stands.
    async fn record_request(&self, request: NewRequest) -> Result<Option<Uuid>, StoreError>;
    /// Marks the owner's open requests of this kind answered; how many.
    async fn answer_requests(&self, user: UserId, kind: RequestKind) -> Result<u64, StoreError>;
    /// Marks the open requests a job answers answered; how many.
    async fn answer_requests_of_job(&self, job_id: Uuid) -> Result<u64, StoreError>;
    /// Requests newest first, older than `before` (a request id) when
    /// given; with `overdue_at`, only those open and due before it.
    async fn subject_requests(
        &self,
        overdue_at: Option<DateTime<Utc>>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<SubjectRequest>, StoreError>;
    /// How many open requests were due before `now`.
    async fn overdue_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The row both engines read.
#[derive(sqlx::FromRow)]
pub(crate) struct RequestRow {
    id: Id,
    user_id: Option<Id>,
    kind: String,
    job_id: Option<Id>,
    requested_at: Time,
    due_at: Time,
    completed_at: Option<Time>,
}

pub(crate) const REQUEST_COLUMNS: &str =
    "id, user_id, kind, job_id, requested_at, due_at, completed_at";

impl TryFrom<RequestRow> for SubjectRequest {
    type Error = StoreError;

    fn try_from(r: RequestRow) -> Result<Self, StoreError> {
        Ok(SubjectRequest {
            id: r.id.0,
            user: r.user_id.map(|u| UserId(u.0)),
            kind: RequestKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("subject request kind {:?}", r.kind)))?,
            job_id: r.job_id.map(|j| j.0),
            requested_at: r.requested_at.0,
            due_at: r.due_at.0,
            completed_at: r.completed_at.map(|t| t.0),
        })
    }
}

pub(crate) fn requests(rows: Vec<RequestRow>) -> Result<Vec<SubjectRequest>, StoreError> {
    rows.into_iter().map(SubjectRequest::try_from).collect()
}

/// When a request made at `at` is due.
pub(crate) fn due(at: DateTime<Utc>) -> DateTime<Utc> {
    at + TimeDelta::days(ANSWER_WITHIN_DAYS)
}
