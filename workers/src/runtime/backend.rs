//! kiln's jobs table as an apalis backend: the worker polls a channel that
//! the claimer fills with jobs it has claimed, and hands a job to apalis
//! only with a running slot for it, so at most `worker.concurrency` run.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::{Task, task_id::RandomId},
    worker::context::WorkerContext,
};
use kiln_store::ClaimedJob;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::PollSemaphore;
use tower_layer::Identity;

use super::slots::Hold;

/// A claimed job and the room it holds until it finishes.
pub(crate) struct Claimed {
    pub job: ClaimedJob,
    pub hold: Hold,
}

/// Shared so apalis' monitor can rebuild the worker around the same claimer.
pub(crate) type ClaimedReceiver = Arc<Mutex<mpsc::Receiver<Claimed>>>;

pub(crate) struct KilnBackend {
    pub claimed: ClaimedReceiver,
    /// The running slots ([`super::slots::Slots::running`]).
    pub running: PollSemaphore,
    /// A running slot taken while no job was waiting yet.
    pub slot: Option<OwnedSemaphorePermit>,
}

impl Backend for KilnBackend {
    type Task = Task<Claimed>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.slot.is_none() {
            match self.running.poll_acquire(cx) {
                Poll::Ready(Some(slot)) => self.slot = Some(slot),
                // Closed: never, the runtime owns the semaphore.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut rx = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        // `None` once the claimer has stopped (shutdown): the worker then
        // drains the jobs it runs and exits. Jobs left in the channel are
        // handed back unstarted.
        rx.poll_recv(cx).map(|c| {
            c.map(|mut c| {
                if let Some(slot) = self.slot.take() {
                    c.hold.run_in(slot);
                }
                Ok(Task::new(c))
            })
        })
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for KilnBackend {
    type Args = Claimed;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
