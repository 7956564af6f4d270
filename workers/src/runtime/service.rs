//! Runs one claimed job: decode, run its handler under the kind's timeout,
//! catch panics, observe cancellation and shutdown, record the outcome with
//! the claim's fencing token.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{error::BoxDynError, task::Task};
use futures::FutureExt;
use kiln_jobs::{JobError, Policy};
use kiln_store::{ClaimedJob, Completion, Failure, Lease, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{backend::Claimed, inflight::InFlight};
use crate::{JobContext, Outcome, Registry, registry::Registered};

#[derive(Clone)]
pub(crate) struct RunJob {
    pub store: Store,
    pub registry: Registry,
    pub inflight: Arc<InFlight>,
    pub completed: mpsc::Sender<(String, Completion)>,
    /// Cancelled when the shutdown grace period is over: running handlers
    /// are dropped and their jobs handed back.
    pub grace_over: CancellationToken,
    pub worker_id: String,
}

impl tower_service::Service<Task<Claimed>> for RunJob {
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Concurrency is bounded by the backend's running slots.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Claimed>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Claimed { job, hold } = task.args;
            // The outcome is written down by `run`; nothing more to do here.
            let _ = this.run(job).await;
            drop(hold);
            Ok(())
        })
    }
}

/// How an attempt ended, before it is written down.
enum Ending {
    Handler(Result<Outcome, JobError>),
    Stopped,
    GraceOver,
}

impl RunJob {
    /// Runs one claimed attempt and writes down how it ended. Returns the
    /// handler's answer; `None` when the attempt was stopped (cancelled) or
    /// handed back at the end of the shutdown grace period.
    pub(crate) async fn run(&self, job: ClaimedJob) -> Option<Result<Outcome, JobError>> {
        // One span per attempt, continuing the trace of whatever enqueued
        // the job; the handler's spans (each provider call) are its
        // children.
        let span = tracing::info_span!(
            "job",
            otel.name = %format!("run {}", job.kind),
            job.kind = %job.kind,
            job.id = %job.lease.id,
            job.attempt = job.attempt,
        );
        if let Some(parent) = &job.traceparent {
            kiln_store::trace::continue_trace(&span, parent);
        }
        let wait = (job.started_at - job.due_at).to_std().unwrap_or_default();
        span.in_scope(|| {
            // The claim that took it, as a point in the trace.
            let _claim = tracing::info_span!(
                "claim",
                otel.name = "claim",
                job.queue = %job.queue,
                queue_wait_ms = wait.as_millis() as u64,
            )
            .entered();
        });
        self.run_attempt(job).instrument(span).await
    }

    async fn run_attempt(&self, job: ClaimedJob) -> Option<Result<Outcome, JobError>> {
        let m = kiln_store::metrics::metrics();
        let kind = job.kind.clone();
        m.jobs_started.with_label_values(&[&kind]).inc();
        let wait = (job.started_at - job.due_at).to_std().unwrap_or_default();
        m.queue_wait_seconds
            .with_label_values(&[&kind])
            .observe(wait.as_secs_f64());

        let lease = job.lease;
        let stop = self.inflight.start(lease);
        let busy = &m.workers_busy;
        busy.inc();
        let ctx = JobContext {
            store: self.store.clone(),
            lease,
            worker_id: self.worker_id.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            owner: job.owner,
            cancel: stop.clone(),
        };
        let registered = self.registry.get(&kind);
        let policy = registered.as_ref().ok().map(|r| r.policy);
        let started = std::time::Instant::now();
        let ending = tokio::select! {
            biased;
            _ = stop.cancelled() => Ending::Stopped,
            _ = self.grace_over.cancelled() => Ending::GraceOver,
            result = attempt(registered, &job, &ctx) => Ending::Handler(result),
        };
        m.run_seconds
            .with_label_values(&[&kind])
            .observe(started.elapsed().as_secs_f64());
        self.inflight.finish(lease);
        busy.dec();
        let answer = match &ending {
            Ending::Handler(result) => Some(result.clone()),
            Ending::Stopped | Ending::GraceOver => None,
        };
        self.record(&job, policy, ending).await;
        answer
    }

    /// Writes down how the attempt ended. `policy` is the kind's registered
    /// one; `None` for a kind without a handler, whose attempt has ended in
    /// a permanent `unknown_kind` error.
    async fn record(&self, job: &ClaimedJob, policy: Option<Policy>, ending: Ending) {
        let m = kiln_store::metrics::metrics();
        let kind = job.kind.as_str();
        let lease = job.lease;
        let outcome = match ending {
            Ending::Handler(Ok(Outcome::Done(result))) => {
                let completion = Completion { lease, result };
                if self
                    .completed
                    .send((kind.to_owned(), completion))
                    .await
                    .is_err()
                {
                    tracing::error!(job_id = %lease.id, "completer gone; the job will be rescued");
                }
                return;
            }
            Ending::Handler(Ok(Outcome::DoneThen(result, follow_ups))) => {
                // Alone, not batched: the follow-ups go in with the success.
                let completion = Completion { lease, result };
                super::completer::write_then(&self.store, kind, &completion, follow_ups).await;
                return;
            }
            Ending::Handler(Ok(Outcome::Snooze(delay))) => {
                self.write(lease, "snooze", || self.store.snooze(lease, delay))
                    .await;
                "snoozed"
            }
            Ending::Handler(Err(error)) => {
                let retry_in = match &error {
                    JobError::Permanent { .. } => None,
                    _ if job.attempt >= job.max_attempts => None,
                    // Only a registered handler fails transiently, so a
                    // transient error always has its kind's policy.
                    JobError::Transient { retry_after, .. } => {
                        policy.map(|p| retry_delay(p.backoff, job.attempt, *retry_after))
                    }
                };
                tracing::info!(job_id = %lease.id, kind, attempt = job.attempt,
                    code = error.code(), retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
                    "attempt failed");
                let failure = Failure {
                    code: error.code().to_owned(),
                    message: error.message().to_owned(),
                    retry_in,
                };
                self.write(lease, "fail", || self.store.fail(lease, failure.clone()))
                    .await;
                if retry_in.is_some() {
                    m.job_retries.with_label_values(&[kind]).inc();
                    "retried"
                } else {
                    "failed"
                }
            }
            Ending::Stopped => {
                let ours = self
                    .write(lease, "cancel", || {
                        self.store
                            .finish_cancelled(lease, "cancelled while running")
                    })
                    .await;
                if ours { "cancelled" } else { "lost" }
            }
            Ending::GraceOver => {
                self.write(lease, "release", || async {
                    self.store.release(&[lease]).await.map(|n| n == 1)
                })
                .await;
                "released"
            }
        };
        m.jobs_finished.with_label_values(&[kind, outcome]).inc();
    }

    /// Writes an outcome, retrying a failing database for a few seconds.
    /// Returns whether the claim was still ours. When the database stays
    /// away, the lease expires and the job is rescued: retried, not lost.
    async fn write<F, Fut>(&self, lease: Lease, what: &str, op: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<bool, kiln_store::StoreError>>,
    {
        let mut delay = Duration::from_millis(50);
        loop {
            match op().await {
                Ok(ours) => {
                    if !ours {
                        tracing::warn!(job_id = %lease.id, what,
                            "outcome refused: the claim is no longer current (job rescued or cancelled)");
                    }
                    return ours;
                }
                Err(e) if delay <= Duration::from_secs(5) => {
                    tracing::warn!(job_id = %lease.id, what, error = %e, "recording outcome failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(job_id = %lease.id, what, error = %e,
                        "could not record outcome; the lease will expire and the job will be rescued");
                    return false;
                }
            }
        }
    }
}

/// Runs a registered kind's handler under its policy's timeout, a panic
/// caught as a transient failure; a kind without a handler fails at once.
async fn attempt(
    registered: Result<&Registered, JobError>,
    job: &ClaimedJob,
    ctx: &JobContext,
) -> Result<Outcome, JobError> {
    let registered = registered?;
    let timeout = registered.policy.timeout;
    let run = AssertUnwindSafe(registered.handler.run(job, ctx)).catch_unwind();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(JobError::transient(
            "timeout",
            format!("attempt ran longer than {}s", timeout.as_secs()),
        )),
        Ok(Err(panic)) => Err(JobError::transient(
            "panic",
            format!("handler panicked: {}", panic_message(&panic)),
        )),
        Ok(Ok(result)) => result,
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// How long a transiently failed attempt waits: the kind's backoff, or
/// longer when the provider asked for longer (`Retry-After`). Never
/// shorter: a throttle that says "in a second" for a few seconds running
/// would otherwise spend every attempt the job has inside that window.
fn retry_delay(
    backoff: kiln_jobs::Backoff,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let backoff = backoff.delay(attempt);
    retry_after.map_or(backoff, |asked| asked.max(backoff))
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    const BACKOFF: kiln_jobs::Backoff = kiln_jobs::Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(600),
    };

    #[test]
    fn a_short_retry_after_waits_the_backoff() {
        // Attempt 3 backs off 4 to 8 s; the provider's 1 s is too soon.
        for _ in 0..50 {
            let wait = retry_delay(BACKOFF, 3, Some(Duration::from_secs(1)));
            assert!(
                wait >= Duration::from_secs(4) && wait <= Duration::from_secs(8),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn a_long_retry_after_is_waited_whole() {
        let wait = retry_delay(BACKOFF, 1, Some(Duration::from_secs(90)));
        assert_eq!(wait, Duration::from_secs(90));
    }

    #[test]
    fn without_retry_after_the_backoff_decides() {
        let wait = retry_delay(BACKOFF, 1, None);
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
    }
}
