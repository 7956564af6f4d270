//! What operators see and do to queues and jobs: the queue overview
//! (counts that never read the finished history whole), queue settings
//! (pause, concurrency limit) the claim path obeys, the job list by filter,
//! and retry, discard and cancel, one job or a filter's worth in bounded
//! batches.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use crate::{JobRecord, JobState, StoreError};

/// How many rows one statement of a bulk action touches.
pub const BATCH: u32 = 1_000;

/// The throughput windows of the overview, in minutes.
pub const WINDOWS: [u32; 3] = [1, 5, 60];

/// A queue's settings row (`queues`): only queues an operator touched
/// have one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub name: String,
    pub paused: bool,
    /// At most this many of the queue's jobs run at once, across every
    /// worker process; None: no limit.
    pub concurrency_limit: Option<u32>,
}

/// Unfinished jobs of one queue in one state (rows of `jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveCount {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
    /// The oldest `run_at` among those that are due (waiting states only).
    pub oldest_due_at: Option<DateTime<Utc>>,
}

/// Jobs of one queue that ended in one state within each of [`WINDOWS`].
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedCount {
    pub queue: String,
    pub state: JobState,
    /// One count per window, in the order of [`WINDOWS`].
    pub counts: [i64; 3],
}

/// Which jobs an operator means; every field given must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub owner: Option<UserId>,
    /// One job (the single-job actions).
    pub id: Option<Uuid>,
}

impl JobFilter {
    pub fn job(id: Uuid) -> JobFilter {
        JobFilter {
            id: Some(id),
            ..JobFilter::default()
        }
    }

    /// ` AND …` conditions for this filter, numbering placeholders from
    /// `first` with `placeholder` (`$n` or `?n`); `uuid` wraps the id's
    /// placeholder (a cast on Postgres). Every value binds as text, in the
    /// order returned.
    pub(crate) fn conditions(
        &self,
        first: usize,
        placeholder: fn(usize) -> String,
        uuid: fn(String) -> String,
    ) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut binds = Vec::new();
        let mut add = |column: &str, value: String, wrap: fn(String) -> String| {
            let p = wrap(placeholder(first + binds.len()));
            sql.push_str(&format!(" AND {column} = {p}"));
            binds.push(value);
        };
        if let Some(state) = self.state {
            add("state", state.as_str().to_owned(), |p| p);
        }
        if let Some(kind) = &self.kind {
            add("kind", kind.clone(), |p| p);
        }
        if let Some(queue) = &self.queue {
            add("queue", queue.clone(), |p| p);
        }
        if let Some(owner) = self.owner {
            add("owner", owner.to_string(), |p| p);
        }
        if let Some(id) = self.id {
            add("id", id.to_string(), uuid);
        }
        (sql, binds)
    }
}

/// The reads operators make and the queue settings they write; engines
/// implement them as SQL only.
#[async_trait]
pub trait Operators: Send + Sync {
    /// Every `queues` row.
    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError>;
    /// Sets (or with None clears) a queue's concurrency limit.
    async fn set_concurrency_limit(
        &self,
        queue: &str,
        limit: Option<u32>,
    ) -> Result<(), StoreError>;
    /// The unfinished jobs by queue and state: `jobs` only, which holds
    /// no history, so this reads the backlog and nothing else.
    async fn live_counts(&self, now: DateTime<Utc>) -> Result<Vec<LiveCount>, StoreError>;
    /// Dead (`failed`) jobs by queue, from their own partial index.
    async fn failed_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Jobs that ended within each window before `now`, by queue and final
    /// state: an index range over `finished_at`, the last hour only.
    async fn finished_counts(&self, now: DateTime<Utc>) -> Result<Vec<FinishedCount>, StoreError>;
    /// Jobs matching `filter`, newest first, older than `before` when given.
    async fn operator_jobs(
        &self,
        filter: &JobFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
}

/// The operators' writes that workers and clients wait on; called only by
/// [`Store`](crate::Store), which announces them. Each touches at most
/// `limit` jobs in one statement and returns them as (id, queue, owned).
#[async_trait]
pub trait OperatorWrites: Send + Sync + 'static {
    /// Failed and cancelled jobs that ended before `ended_before` go back
    /// to `jobs`, available now, with one more attempt when they used
    /// their last, their error history kept and no credits reserved (their
    /// reservation was refunded when they ended: an operator's retry is
    /// free). Waiting `scheduled` and `retryable` jobs become due now.
    async fn retry_batch(
        &self,
        filter: &JobFilter,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError>;
    /// Waiting jobs end as `state` (`failed`: discarded, with a
    /// `discarded` entry in their error history; or `cancelled`), moved to
    /// `finished_jobs` as every ending is, which refunds their credits.
    async fn end_waiting_batch(
        &self,
        filter: &JobFilter,
        state: JobState,
        reason: &str,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError>;
    /// Asks the workers of running jobs to stop them (as an owner's cancel
    /// does for a running job).
    async fn request_cancel_batch(
        &self,
        filter: &JobFilter,
        limit: u32,
    ) -> Result<Vec<Touched>, StoreError>;

    /// Claims from `queues` that have a concurrency limit (and are not
    /// paused), no more of each than its limit less its running jobs, up
    /// to `limit` in all. Claims of one limited queue are serialized (its
    /// settings row is locked), so limits hold across processes.
    async fn claim_capped(
        &self,
        worker: &str,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<crate::ClaimedJob>, StoreError>;
}

/// A job an operator's write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub id: Uuid,
    pub queue: String,
    /// It has an owner, whose clients may wait on its changes.
    pub owned: bool,
}

/// One queue as the overview shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOverview {
    pub queue: String,
    /// Jobs by state: the waiting and running ones, and the dead
    /// (`failed`) ones kept for operators. Succeeded and cancelled history
    /// is not counted whole (that is the scan that makes dashboards slow);
    /// [`QueueOverview::finished`] says how many ended lately.
    pub counts: BTreeMap<JobState, i64>,
    /// How long the oldest due job has waited.
    pub oldest_due_age: Option<Duration>,
    pub paused: bool,
    pub concurrency_limit: Option<u32>,
    /// Per window of [`WINDOWS`]: jobs that ended by final state.
    pub finished: [BTreeMap<JobState, i64>; 3],
}

impl QueueOverview {
    fn new(queue: String) -> QueueOverview {
        let counts = [
            JobState::Scheduled,
            JobState::Available,
            JobState::Running,
            JobState::Retryable,
            JobState::Failed,
        ]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
        let ended: BTreeMap<JobState, i64> =
            [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        QueueOverview {
            queue,
            counts,
            oldest_due_age: None,
            paused: false,
            concurrency_limit: None,
            finished: [ended.clone(), ended.clone(), ended],
        }
    }
}

/// Puts the engine's answers together: every queue of the catalogue,
/// and any other queue that holds jobs or settings.
pub(crate) fn overview(
    now: DateTime<Utc>,
    settings: Vec<QueueSettings>,
    live: Vec<LiveCount>,
    failed: Vec<(String, i64)>,
    finished: Vec<FinishedCount>,
) -> Vec<QueueOverview> {
    let mut queues: BTreeMap<String, QueueOverview> = kiln_jobs::catalogue::queues()
        .into_iter()
        .map(|q| (q.to_owned(), QueueOverview::new(q.to_owned())))
        .collect();
    fn entry<'a>(
        queues: &'a mut BTreeMap<String, QueueOverview>,
        q: &str,
    ) -> &'a mut QueueOverview {
        queues
            .entry(q.to_owned())
            .or_insert_with(|| QueueOverview::new(q.to_owned()))
    }
    for s in settings {
        let o = entry(&mut queues, &s.name);
        o.paused = s.paused;
        o.concurrency_limit = s.concurrency_limit;
    }
    for l in live {
        let o = entry(&mut queues, &l.queue);
        o.counts.insert(l.state, l.count);
        if let Some(at) = l.oldest_due_at {
            let age = (now - at).to_std().unwrap_or_default();
            o.oldest_due_age = Some(o.oldest_due_age.map_or(age, |a| a.max(age)));
        }
    }
    for (queue, n) in failed {
        entry(&mut queues, &queue)
            .counts
            .insert(JobState::Failed, n);
    }
    for f in finished {
        let o = entry(&mut queues, &f.queue);
        for (window, n) in o.finished.iter_mut().zip(f.counts) {
            window.insert(f.state, n);
        }
    }
    queues.into_values().collect()
}

/// How long the claim path trusts its knowledge of which queues have a
/// limit. A queue limited meanwhile is skipped by the plain claim (its SQL
/// checks the settings row), so a stale answer delays that queue's jobs by
/// this much at most; it never lets a limit be overrun.
const LIMITS_TTL: Duration = Duration::from_secs(1);

/// Which queues have a concurrency limit, as the claim path last read it.
#[derive(Default)]
pub(crate) struct LimitedQueues(Mutex<Option<(Instant, HashSet<String>)>>);

impl LimitedQueues {
    /// Those of `queues` that have a limit, reading the settings again
    /// when the last read is older than [`LIMITS_TTL`].
    pub(crate) async fn among(
        &self,
        queues: &[String],
        engine: &dyn Operators,
    ) -> Result<Vec<String>, StoreError> {
        let fresh = {
            let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
            known
                .as_ref()
                .filter(|(at, _)| at.elapsed() < LIMITS_TTL)
                .map(|(_, names)| {
                    queues
                        .iter()
                        .filter(|q| names.contains(*q))
                        .cloned()
                        .collect()
                })
        };
        if let Some(limited) = fresh {
            return Ok(limited);
        }
        let names: HashSet<String> = engine
            .queue_settings()
            .await?
            .into_iter()
            .filter(|s| s.concurrency_limit.is_some())
            .map(|s| s.name)
            .collect();
        let limited = queues
            .iter()
            .filter(|q| names.contains(*q))
            .cloned()
            .collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), names));
        Ok(limited)
    }

    /// Reads the settings again at the next claim (this process changed them).
    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The ended jobs a retry may bring back, of `candidates` (a query of
/// `finished_jobs` rows' `id, finished_at, kind, owner`): an account has
/// one export at a time (the unique index of migration 0022), so of its
/// ended exports only the newest comes back, and none while one is
/// unfinished; the rest of the batch goes on. Both dialects run it.
pub(crate) fn retryable_ended(candidates: &str) -> String {
    format!(
        "SELECT id, finished_at FROM (
             SELECT c.id, c.finished_at, c.kind,
                    row_number() OVER (
                        PARTITION BY CASE WHEN c.kind = 'data_export' THEN c.owner END
                        ORDER BY c.id DESC) AS nth
             FROM ({candidates}) c
             WHERE c.kind <> 'data_export' OR NOT EXISTS (
                 SELECT 1 FROM jobs j WHERE j.owner = c.owner AND j.kind = 'data_export')) x
         WHERE kind <> 'data_export' OR nth = 1"
    )
}
