use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_jobs::{Job, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job is in its life. `scheduled` and `retryable` wait for their
/// `run_at`; `succeeded`, `failed` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Scheduled,
    Available,
    Running,
    Retryable,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job to insert. Built from a typed payload with [`NewJob::of`], which
/// takes the queue, attempts and priority from the kind.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    pub owner: Option<UserId>,
    pub payload: serde_json::Value,
    pub schema_version: i32,
    pub priority: i16,
    pub max_attempts: u32,
    /// `None` runs as soon as a worker is free.
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    /// Credits of the owner's balance the job reserves as it goes in
    /// (0: free). The database refuses the job when the balance is short
    /// ([`StoreError::InsufficientCredits`](crate::StoreError)), and settles
    /// the reservation once when the job ends: charged on success,
    /// refunded otherwise.
    pub credits: u32,
    /// Where the owner hears of the job's changes (written with the job;
    /// the database queues each delivery: migration `0028_webhooks.sql`).
    pub webhook: Option<WebhookTarget>,
    /// The job whose success enqueues this one (a follow-up); set by the
    /// store as it enqueues a completion's follow-ups.
    pub parent_id: Option<Uuid>,
    /// The part of `credits` reserved for the follow-ups this job will
    /// enqueue when it succeeds: handed back then, in the transaction where
    /// the follow-ups reserve it each for itself (migration 0029).
    pub follow_up_credits: u32,
    /// The W3C `traceparent` of the span that enqueued it (see
    /// [`crate::trace`]); its worker's spans continue that trace.
    pub traceparent: Option<String>,
}

/// A client's webhook for one job: a URL already checked by the caller
/// (https, public addresses only) and the events it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub events: kiln_jobs::WebhookEvents,
}

impl NewJob {
    pub fn of<J: Job>(job: &J) -> Result<NewJob, serde_json::Error> {
        Ok(NewJob {
            kind: J::KIND.to_owned(),
            queue: J::QUEUE.to_owned(),
            owner: None,
            payload: serde_json::to_value(job)?,
            schema_version: J::SCHEMA_VERSION,
            priority: J::PRIORITY,
            max_attempts: J::MAX_ATTEMPTS,
            run_at: None,
            idempotency_key: None,
            credits: 0,
            webhook: None,
            parent_id: None,
            follow_up_credits: 0,
            traceparent: crate::trace::traceparent(),
        })
    }

    /// Also reserves `credits` for the follow-ups the job will enqueue
    /// when it succeeds (see [`NewJob::follow_up_credits`]).
    pub fn reserving_for_follow_ups(mut self, credits: u32) -> Self {
        self.credits += credits;
        self.follow_up_credits += credits;
        self
    }

    /// The owner hears of the job's changes at `target`.
    pub fn webhook(mut self, target: Option<WebhookTarget>) -> Self {
        self.webhook = target;
        self
    }

    /// The job reserves `credits` of its owner's balance.
    pub fn reserving(mut self, credits: u32) -> Self {
        self.credits = credits;
        self
    }

    pub fn owner(mut self, owner: UserId) -> Self {
        self.owner = Some(owner);
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: Uuid,
    /// false when an earlier job with the same idempotency key was returned.
    pub created: bool,
}

/// The right to write one claimed job's outcome: the job id plus the
/// fencing token of the claim. A claim that was rescued and claimed again
/// has a newer token, so writes with this one are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: Uuid,
    pub token: i64,
    /// The job has an owner, whose clients may be waiting on its changes:
    /// only such jobs' changes are announced.
    pub owned: bool,
}

/// A job handed to a worker by a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub lease: Lease,
    pub kind: String,
    pub queue: String,
    pub owner: Option<UserId>,
    pub payload: serde_json::Value,
    pub schema_version: i32,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the job became due: the start of its queue wait.
    pub due_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// The trace of the span that enqueued it, if any.
    pub traceparent: Option<String>,
}

/// One failed attempt, kept in the job's error history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub code: String,
    pub message: String,
    pub permanent: bool,
}

/// A failed attempt: its error, and when to try again (`None`: never, the
/// job ends `failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub retry_in: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub lease: Lease,
    pub result: serde_json::Value,
}

/// A job whose worker was lost (its lease expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub id: Uuid,
    pub kind: String,
    pub state: JobState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was waiting; it is `cancelled` now.
    Cancelled,
    /// It is running; its worker has been told and will stop it.
    Cancelling,
    /// It had already finished in this state.
    AlreadyFinished(JobState),
    NotFound,
}

/// A whole job row, of `jobs` (unfinished) or `finished_jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub owner: Option<UserId>,
    pub payload: serde_json::Value,
    pub schema_version: i32,
    pub state: JobState,
    pub stage: Option<String>,
    pub progress: i16,
    pub priority: i16,
    pub attempt: u32,
    pub max_attempts: u32,
    pub run_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub token: i64,
    pub rescues: u32,
    pub cancel_requested: bool,
    pub result: Option<serde_json::Value>,
    pub errors: Vec<ErrorEntry>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The job whose success enqueued this one, for a follow-up.
    pub parent_id: Option<Uuid>,
}

/// Jobs of one queue in one state ([`Queue::queue_stats`](crate::Queue::queue_stats)).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStat {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
    /// Age of the oldest due job, for `available` (and due scheduled or
    /// retryable) jobs only.
    pub oldest_due_age: Option<Duration>,
}

/// Something another part of the process may want to react to at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A job became available on this queue (`None`: maybe on any queue,
    /// e.g. after the listener reconnected and may have missed some).
    JobsAvailable(Option<String>),
    CancelRequested(Uuid),
    /// A job's state, stage or progress changed (jobs with an owner only,
    /// for long-polling clients).
    JobChanged(Uuid),
    /// A session was revoked (by the SHA-256 of its token): no process may
    /// go on trusting it.
    SessionRevoked(String),
}

impl StoreEvent {
    /// Whether job `id` may have changed: its own change, or a gap in the
    /// notifications (the listener reconnected after losing the database
    /// and says `JobsAvailable(None)`), in which anything may have happened.
    pub fn may_have_changed(&self, id: Uuid) -> bool {
        match self {
            StoreEvent::JobChanged(changed) => *changed == id,
            StoreEvent::JobsAvailable(None) => true,
            _ => false,
        }
    }
}
