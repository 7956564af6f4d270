//! Runs one job through its real handler, in process: for handler tests
//! that need no worker runtime, no providers and no network.
//!
//! [`TestWorker::perform`] enqueues the job in the real store, claims it
//! (so the handler sees a real `jobs` row, lease and fencing token), runs
//! it the way the runtime runs every attempt (the same [`JobContext`],
//! progress written to the store, the kind's timeout, panics caught) and
//! writes the outcome back as the runtime does: the row ends `succeeded`,
//! `failed`, `retryable` or snoozed exactly as after a real run.
//!
//! No heartbeat runs: the claim lasts an hour, and a cancellation asked for
//! in the store does not reach a handler while `perform` runs it.
//!
//! The handlers run over the offline `dev` providers: the dev image
//! generator and upscaler, the word-list moderator with its default blocked
//! words, email and SMS outboxes in a temporary directory this value owns,
//! objects in memory, and a fresh random URL-signing key.
//!
//! ```ignore
//! use kiln_jobs::Probe;
//! use kiln_workers::testing::TestWorker;
//!
//! let worker = TestWorker::new(store.clone());
//! let performed = worker.perform(Probe::default()).await?;
//! let job_id = performed.job_id;
//! let result = performed.expect_done();
//! assert_eq!(result.attempt, 1);
//! let row = worker.store().get(job_id).await?.expect("the job's row");
//! assert_eq!(row.state, kiln_store::JobState::Succeeded);
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kiln_jobs::RetentionSettings;
use kiln_jobs::{Job, JobError};
use kiln_providers::{
    email::{DEV_FROM, DevMailer},
    moderation::DEFAULT_BLOCKED_WORDS,
    sms::DevSms,
};
use kiln_store::{Completion, NewJob, Objects, Store};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Clock, Outcome, Registry,
    handlers::{Deps, registry},
    runtime::{completer, inflight::InFlight, service::RunJob},
};

/// How long a claim made by [`TestWorker::perform`] lasts. Nothing extends
/// it, so it outlasts the longest kind's timeout.
const LEASE: Duration = Duration::from_secs(60 * 60);

/// Every registered handler over the offline dev providers, on one store.
pub struct TestWorker {
    store: Store,
    retention: RetentionSettings,
    deps: Deps,
    registry: Registry,
    run: RunJob,
    completed: Mutex<mpsc::Receiver<(String, Completion)>>,
    emails: PathBuf,
    texts: PathBuf,
    /// Holds the outboxes; removed when the worker is dropped.
    _outbox: tempfile::TempDir,
}

/// One performed attempt: the job's id (its row is in the store) and what
/// the handler answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Performed<R> {
    pub job_id: Uuid,
    /// The handler's answer, its result typed; an error is the one the
    /// runtime recorded (a permanent one failed the job, a transient one
    /// scheduled a retry unless it was the last attempt).
    pub result: Result<Outcome<R>, JobError>,
}

impl<R: std::fmt::Debug> Performed<R> {
    /// The result of a job that finished; panics with the handler's answer
    /// otherwise.
    #[track_caller]
    pub fn expect_done(self) -> R {
        match self.result {
            Ok(Outcome::Done(result)) => result,
            other => panic!("job {} did not finish: {other:?}", self.job_id),
        }
    }

    /// The error of a job whose attempt failed; panics otherwise.
    #[track_caller]
    pub fn expect_error(self) -> JobError {
        match self.result {
            Err(error) => error,
            other => panic!("job {} did not fail: {other:?}", self.job_id),
        }
    }
}

impl TestWorker {
    /// Every handler with the default retention, on the system clock.
    pub fn new(store: Store) -> TestWorker {
        TestWorker::with_retention(store, &RetentionSettings::default(), Clock::system())
    }

    /// Every handler with `retention`, on `clock` (e.g. a fixed time days
    /// ahead, to make rows due for the `retention_purge`).
    ///
    /// # Panics
    ///
    /// When no temporary directory can be made for the outboxes.
    pub fn with_retention(store: Store, retention: &RetentionSettings, clock: Clock) -> TestWorker {
        TestWorker::over(store, retention, clock, Objects::memory())
    }

    /// [`TestWorker::with_retention`] over `objects`, which another test
    /// worker (on another clock) may share.
    ///
    /// # Panics
    ///
    /// When no temporary directory can be made for the outboxes.
    pub fn over(
        store: Store,
        retention: &RetentionSettings,
        clock: Clock,
        objects: Objects,
    ) -> TestWorker {
        let outbox = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot make a temporary outbox directory: {e}"),
        };
        let emails = outbox.path().join("email");
        let texts = outbox.path().join("sms");
        let blocked = DEFAULT_BLOCKED_WORDS.iter().map(|w| (*w).to_owned());
        let mut deps = Deps::dev(objects, blocked.collect());
        deps.mailer = Arc::new(DevMailer::new(&emails, DEV_FROM));
        deps.sms = Arc::new(DevSms::new(&texts));
        deps.clock = clock;
        let registry = registry(retention, &deps);
        let (completed_tx, completed_rx) = mpsc::channel(1);
        let run = RunJob {
            store: store.clone(),
            registry: registry.clone(),
            inflight: Arc::new(InFlight::default()),
            completed: completed_tx,
            grace_over: CancellationToken::new(),
            worker_id: format!("test-worker-{}", Uuid::now_v7().simple()),
        };
        TestWorker {
            store,
            retention: retention.clone(),
            deps,
            registry,
            run,
            completed: Mutex::new(completed_rx),
            emails,
            texts,
            _outbox: outbox,
        }
    }

    /// The same handlers over `objects` (e.g. another worker's, to purge
    /// what that one stored).
    pub fn with_objects(self, objects: Objects) -> TestWorker {
        self.with_deps(|deps| deps.objects = objects)
    }

    /// The same handlers over changed dependencies (e.g. links under a
    /// public base URL).
    pub fn with_deps(mut self, change: impl FnOnce(&mut Deps)) -> TestWorker {
        change(&mut self.deps);
        self.registry = registry(&self.retention, &self.deps);
        self.run.registry = self.registry.clone();
        self
    }

    /// Runs `payload` as a job without an owner; see the module docs.
    /// `Err` when the job could not be enqueued or claimed; the handler's
    /// own answer, error or not, is in [`Performed::result`].
    pub async fn perform<J: Job>(&self, payload: J) -> Result<Performed<J::Result>, JobError> {
        self.perform_job(&payload, None).await
    }

    /// Runs `payload` as a job of `owner`'s, as the API enqueues jobs a user
    /// asked for (the handler reads [`JobContext::owner`](crate::JobContext)).
    pub async fn perform_as<J: Job>(
        &self,
        owner: kiln_jobs::UserId,
        payload: J,
    ) -> Result<Performed<J::Result>, JobError> {
        self.perform_job(&payload, Some(owner)).await
    }

    async fn perform_job<J: Job>(
        &self,
        payload: &J,
        owner: Option<kiln_jobs::UserId>,
    ) -> Result<Performed<J::Result>, JobError> {
        // A queue of its own: the claim takes this job, not another one
        // already waiting (e.g. the job `create_generation` enqueued).
        let queue = format!("perform-{}", Uuid::now_v7().simple());
        let mut job = NewJob::of(payload)
            .map_err(|e| JobError::permanent("unserializable_payload", e.to_string()))?
            .queue(queue.clone());
        if let Some(owner) = owner {
            job = job.owner(owner);
        }
        let job_id = self.store.enqueue(job).await?.id;
        let claimed = self
            .store
            .claim(&self.run.worker_id, &[queue], 1, LEASE)
            .await?
            .pop()
            .ok_or_else(|| {
                JobError::permanent("not_claimed", "the enqueued job was not claimed")
            })?;

        // The completer's channel and write, as the runtime records a success.
        let mut completed = self.completed.lock().await;
        let answer = self.run.run(claimed).await;
        if let Ok(done) = completed.try_recv() {
            completer::write(&self.store, vec![done]).await;
        }
        drop(completed);

        let result = match answer {
            None => Err(JobError::permanent(
                "cancelled",
                "the job was cancelled while it ran",
            )),
            Some(Err(error)) => Err(error),
            Some(Ok(Outcome::Snooze(delay))) => Ok(Outcome::Snooze(delay)),
            Some(Ok(Outcome::Done(value))) => serde_json::from_value(value)
                .map(Outcome::Done)
                .map_err(|e| JobError::permanent("undecodable_result", e.to_string())),
            Some(Ok(Outcome::DoneThen(value, follow_ups))) => serde_json::from_value(value)
                .map(|result| Outcome::DoneThen(result, follow_ups))
                .map_err(|e| JobError::permanent("undecodable_result", e.to_string())),
        };
        Ok(Performed { job_id, result })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where handlers store images.
    pub fn objects(&self) -> &Objects {
        &self.deps.objects
    }

    /// The providers and storage the handlers run over.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The dev mailer's outbox: one `email-<uuid>.eml` per email sent.
    pub fn email_outbox(&self) -> &Path {
        &self.emails
    }

    /// The dev SMS outbox: one `sms-<uuid>.txt` per text sent.
    pub fn sms_outbox(&self) -> &Path {
        &self.texts
    }

    /// The emails sent so far, oldest first.
    pub fn emails(&self) -> Vec<String> {
        read_outbox(&self.emails)
    }

    /// The texts sent so far, oldest first.
    pub fn texts(&self) -> Vec<String> {
        read_outbox(&self.texts)
    }
}

/// Every message in an outbox directory, by file name: the names carry a
/// time-ordered UUID, so that is oldest first. A missing directory is an
/// empty outbox; a message still being written (a hidden temporary file)
/// is not in it yet.
fn read_outbox(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}
