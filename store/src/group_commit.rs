//! Group commit for single enqueues: generations asked for at the same
//! time by different requests are written in one transaction, so they wait
//! for one disk sync together instead of one each.
//!
//! Nothing waits to form a group: a request that finds a writer free is
//! written at once, alone (one statement on Postgres). Only while every
//! writer is busy do requests queue, and the next free writer takes all
//! that queued (up to [`MAX_GROUP`]). Each request still gets its own
//! answer after its own commit. A group that fails (a deadlock between two
//! groups over one idempotency key, a fault) is written again one by one,
//! so one request's failure is never another's.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    StoreError,
    generations::{GenerationEnqueued, NewGeneration},
    metrics::metrics,
    queue::Engine,
};

/// The most generations one transaction writes.
const MAX_GROUP: usize = 64;
/// Writers at once: transactions in flight, each holding a connection.
const WRITERS: usize = 4;

type Answer = oneshot::Sender<Result<GenerationEnqueued, StoreError>>;

#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<(NewGeneration, Answer)>,
}

impl GroupCommit {
    /// Starts the dispatcher; it ends when the last `GroupCommit` is dropped.
    pub(crate) fn start(engine: Arc<dyn Engine>) -> GroupCommit {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(engine, pending));
        GroupCommit { queue }
    }

    pub(crate) async fn create_generation(
        &self,
        g: NewGeneration,
    ) -> Result<GenerationEnqueued, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((g, answer))
            .map_err(|_| StoreError::WriterGone)?;
        answered.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn dispatch(
    engine: Arc<dyn Engine>,
    mut pending: mpsc::UnboundedReceiver<(NewGeneration, Answer)>,
) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    while let Some(first) = pending.recv().await {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while the writers were busy goes in this group.
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match pending.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let engine = engine.clone();
        // A task per group: a panic in one loses only its own answers
        // (their callers get `WriterGone`), not the dispatcher.
        tokio::spawn(async move {
            write(&*engine, group).await;
            drop(writer);
        });
    }
}

async fn write(engine: &dyn Engine, mut group: Vec<(NewGeneration, Answer)>) {
    metrics().enqueue_group_size.observe(group.len() as f64);
    if group.len() > 1 {
        // Each generation locks its owner's credit account until the
        // group commits: always in owner order, the order completions lock
        // them in too, so two transactions never deadlock over accounts.
        group.sort_by_key(|(g, _)| g.owner);
        let generations = group.iter().map(|(g, _)| g.clone()).collect();
        match engine.create_generations(generations).await {
            Ok(outcomes) => {
                for ((_, answer), outcome) in group.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
                return;
            }
            // One owner's balance was short: the transaction rolled back;
            // alone, that request gets its 402 and the others go in.
            Err(StoreError::InsufficientCredits) => {}
            // The database refused a statement (or the commit): the
            // transaction rolled back and nothing of the group is stored.
            Err(StoreError::Database(sqlx::Error::Database(e))) => tracing::warn!(
                error = %e,
                generations = group.len(),
                "a group commit failed; writing its generations one by one"
            ),
            // Out of disk: refused and rolled back as a whole; alone,
            // each would be refused the same way.
            Err(StoreError::StorageFull(message)) => {
                for (_, answer) in group {
                    let _ = answer.send(Err(StoreError::StorageFull(message.clone())));
                }
                return;
            }
            // The connection failed: whether the commit happened is
            // unknown, so writing again could store them twice. Each caller
            // hears of it, as it would have alone.
            Err(e) => {
                let message = e.to_string();
                for (_, answer) in group {
                    let _ = answer.send(Err(StoreError::GroupFailed(message.clone())));
                }
                return;
            }
        }
    }
    for (g, answer) in group {
        let _ = answer.send(engine.create_generation(g).await);
    }
}
