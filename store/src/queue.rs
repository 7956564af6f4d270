use std::time::Duration;

use async_trait::async_trait;
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::{
    CancelOutcome, ClaimedJob, Completion, Enqueued, Failure, JobRecord, Lease, NewJob, QueueStat,
    Rescued, StoreError, StoreEvent,
    generations::{BatchEnqueued, GenerationEnqueued, NewGeneration, NewGenerationBatch},
};

/// The queue operations the [`Store`](crate::Store) hands straight to
/// the engine: they change nothing a subscriber waits for. One
/// implementation per database, one conformance suite for both
/// (`store/tests/conformance.rs`).
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Which database this is, for logs and the benchmark.
    fn backend_name(&self) -> &'static str;

    async fn migrate(&self) -> Result<(), StoreError>;
    /// True when every migration this build knows has been applied.
    async fn migrations_current(&self) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Extends the leases that are still ours. Returns the ones whose
    /// handler must stop: cancelled by someone, or no longer ours.
    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Lease>, StoreError>;

    async fn pause_queue(&self, queue: &str) -> Result<(), StoreError>;
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError>;

    /// Removes the finished jobs that finished before `before` (and their
    /// idempotency keys). Rows are deleted `limit` at a time; on Postgres,
    /// whole days older than the cutoff are dropped first, however many
    /// rows they hold. Returns how many jobs were removed.
    async fn prune_finished(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Creates the storage finished jobs will move to in the coming days
    /// (Postgres: the day partitions of `finished_jobs`). Cheap and
    /// idempotent: the maintenance loop calls it on every tick.
    async fn ensure_finished_partitions(&self) -> Result<(), StoreError>;

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;
    /// [`Queue::get`] for several jobs in one read: those among `ids` that
    /// exist, in no particular order.
    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError>;
    /// The follow-ups of `parents` (jobs whose `parent_id` is one of
    /// them), in either table, oldest first.
    async fn children_of(&self, parents: &[Uuid]) -> Result<Vec<JobRecord>, StoreError>;
    /// Counts by queue and state, and the age of the oldest due job, over
    /// both tables: it reads the whole finished history (150-250 ms with
    /// 1,000,000 finished jobs), so it is for tests and the benchmark; the
    /// gauges use [`Store::queue_depths`](crate::Store::queue_depths).
    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError>;
}

/// The writes after which subscribers may have something to do (a job
/// became available, changed, or is to be cancelled). Engines implement
/// them as SQL only; callers go through [`Store`](crate::Store), which
/// counts them in the metrics and announces them ([`JobWrites::announce`]).
///
/// Writes that concern a claimed job take its [`Lease`] and succeed only
/// while that claim is current (`Ok(false)` otherwise), so a worker whose
/// job was rescued cannot complete it a second time.
#[async_trait]
pub trait JobWrites: Send + Sync + 'static {
    /// Tells every process of these changes, once they have committed.
    /// False when the database cannot (SQLite, one process): then the
    /// `Store` tells its own subscribers.
    fn announce(&self, events: &[StoreEvent]) -> bool;

    /// Whether every other process's notifications reach this one now (a
    /// revoked session must not stay remembered while they cannot).
    fn hears_every_process(&self) -> bool;

    /// Inserts a job, or returns the existing one with the same owner, kind
    /// and idempotency key.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, StoreError>;
    /// Inserts many jobs at once. A job whose idempotency key exists already
    /// is skipped. Returns, for each inserted job, its position in `jobs`
    /// and its id.
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<(usize, Uuid)>, StoreError>;

    /// Claims up to `limit` due jobs from `queues` for `worker`, skipping
    /// paused queues and those with a concurrency limit (claimed by
    /// `OperatorWrites::claim_capped`), in priority then per-owner round-robin order. Each
    /// claim spends an attempt and bumps the token.
    async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError>;

    /// Records successes; returns how many were still ours.
    async fn complete(&self, done: &[Completion]) -> Result<u64, StoreError>;

    /// Records one success and enqueues its follow-ups in the same
    /// transaction, each with the job as its parent and its owner; nothing
    /// is enqueued when the success was not ours any more (a stale lease).
    /// Returns the follow-ups' ids, or `None` for a stale lease.
    async fn complete_then(
        &self,
        done: &Completion,
        follow_ups: Vec<NewJob>,
    ) -> Result<Option<Vec<Uuid>>, StoreError>;
    /// Records a failed attempt: retry later, or fail for good.
    async fn fail(&self, lease: Lease, failure: Failure) -> Result<bool, StoreError>;
    /// Puts a running job back to wait `delay` without spending its attempt.
    async fn snooze(&self, lease: Lease, delay: Duration) -> Result<bool, StoreError>;
    /// Hands jobs back unfinished (graceful shutdown): available again at
    /// once, the attempt not spent.
    async fn release(&self, leases: &[Lease]) -> Result<u64, StoreError>;
    /// Ends a running job whose cancellation was asked for.
    async fn finish_cancelled(&self, lease: Lease, reason: &str) -> Result<bool, StoreError>;
    /// Stage and progress (0-100) of a running job, as its handler reports them.
    async fn set_progress(
        &self,
        lease: Lease,
        stage: Option<&str>,
        progress: u8,
    ) -> Result<bool, StoreError>;

    /// Cancels a job: at once when waiting, by telling its worker when
    /// running. `owner` restricts it to that owner's jobs.
    async fn cancel(&self, id: Uuid, owner: Option<UserId>) -> Result<CancelOutcome, StoreError>;
    async fn resume_queue(&self, queue: &str) -> Result<(), StoreError>;

    /// Takes back running jobs whose lease expired: retryable after backoff,
    /// or failed when out of attempts or past `crash_cap` rescues.
    async fn rescue_expired(&self, crash_cap: u32) -> Result<Vec<Rescued>, StoreError>;

    /// Stores a generation request with its `generate_image` job in one
    /// transaction.
    async fn create_generation(&self, g: NewGeneration) -> Result<GenerationEnqueued, StoreError>;
    /// [`JobWrites::create_generation`] for each, all in one transaction
    /// (one commit to wait for); any error fails them all.
    async fn create_generations(
        &self,
        gs: Vec<NewGeneration>,
    ) -> Result<Vec<GenerationEnqueued>, StoreError>;
    /// Stores a batch of generations with their jobs in one transaction,
    /// under the batch's one idempotency key.
    async fn create_generation_batch(
        &self,
        b: NewGenerationBatch,
    ) -> Result<BatchEnqueued, StoreError>;

    /// Enqueues `job` for a cron plan's `slot`, unless that slot (or a
    /// later one) was handled already or the plan's last job is still
    /// unfinished (see `schedules.rs`).
    async fn fire_slot(
        &self,
        plan: &str,
        slot: chrono::DateTime<chrono::Utc>,
        job: NewJob,
    ) -> Result<crate::schedules::SlotFired, StoreError>;

    /// Deletes an account at its owner's request and enqueues `purge` (its
    /// `account_purge`) in the same transaction; see `deletion.rs`. None
    /// when the account does not exist or was deleted already.
    async fn delete_account(
        &self,
        user: UserId,
        purge: NewJob,
    ) -> Result<Option<crate::deletion::AccountDeleted>, StoreError>;
}

/// The operations a [`Store`](crate::Store) passes straight through.
pub trait Database:
    Queue
    + crate::access_log::AccessLog
    + crate::accounts::Accounts
    + crate::credits::Credits
    + crate::generations::Generations
    + crate::orders::Orders
    + crate::schedules::Schedules
    + crate::retention::Retention
    + crate::deletion::Deletion
    + crate::subject_requests::SubjectRequests
    + crate::export::Export
    + crate::notices::Notices
    + crate::operator_exports::OperatorExports
    + crate::operators::Operators
    + crate::workers::Workers
    + crate::webhooks::Webhooks
{
}

impl<
    T: Queue
        + crate::access_log::AccessLog
        + crate::accounts::Accounts
        + crate::credits::Credits
        + crate::generations::Generations
        + crate::orders::Orders
        + crate::schedules::Schedules
        + crate::retention::Retention
        + crate::deletion::Deletion
        + crate::subject_requests::SubjectRequests
        + crate::export::Export
        + crate::notices::Notices
        + crate::operator_exports::OperatorExports
        + crate::operators::Operators
        + crate::workers::Workers
        + crate::webhooks::Webhooks,
> Database for T
{
}

/// A database engine: everything, as the [`Store`](crate::Store) sees it.
pub trait Engine: Database + JobWrites + crate::operators::OperatorWrites {}

impl<T: Database + JobWrites + crate::operators::OperatorWrites> Engine for T {}

/// A completion's follow-ups as they go in: children of `parent`, working
/// for its owner. Each is keyed by its parent and position, so however a
/// completion is retried, a parent has each child once.
pub(crate) fn as_follow_ups(
    follow_ups: Vec<NewJob>,
    parent: Uuid,
    owner: Option<kiln_jobs::UserId>,
) -> Vec<NewJob> {
    follow_ups
        .into_iter()
        .enumerate()
        .map(|(i, mut job)| {
            job.parent_id = Some(parent);
            job.owner = owner;
            job.idempotency_key = Some(format!("follow-up:{parent}:{i}"));
            job
        })
        .collect()
}
