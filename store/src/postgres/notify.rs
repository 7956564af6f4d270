//! Change notifications to every process, sent after the write commits.
//!
//! Triggers used to `NOTIFY` inside the writing transaction. Postgres
//! serializes the commits of transactions that notified (a global lock,
//! held through the WAL flush, keeps the queue in commit order), so no two
//! of them can share a disk sync: enqueues through the API topped out near
//! one per fsync (634/s on Postgres in `kiln bench`). Here the writes
//! commit without notifying, and one task per process sends what they
//! changed in batches, in a transaction of its own that has nothing to
//! make durable (`synchronous_commit = off`), so it holds that lock only
//! briefly.
//!
//! A notification is a hint: a process that dies between a commit and its
//! notification loses it, and workers find the job at their next poll
//! (`worker.poll_interval_ms`), long-polling clients at their next read.

use std::collections::BTreeSet;

use tokio::sync::mpsc;

use super::{AVAILABLE_CHANNEL, CANCEL_CHANNEL, CHANGED_CHANNEL, Db, SESSION_CHANNEL};
use crate::StoreEvent;

/// The most notifications one statement sends.
const BATCH: usize = 1000;

/// Where a process's writes hand their notifications.
pub(super) struct Notifier {
    queue: mpsc::UnboundedSender<StoreEvent>,
}

impl Notifier {
    /// Starts the task that sends the notifications; it ends when the
    /// notifier is dropped and what was handed to it is sent.
    pub fn spawn(pool: Db) -> Notifier {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(send_all(pool, pending));
        Notifier { queue }
    }

    pub fn send(&self, events: impl IntoIterator<Item = StoreEvent>) {
        for event in events {
            // Only fails once the task is gone, with the runtime.
            let _ = self.queue.send(event);
        }
    }
}

/// A notification as Postgres carries it: channel and payload.
fn notice(event: StoreEvent) -> (&'static str, String) {
    match event {
        // Empty payload: any queue (listeners wake every worker).
        StoreEvent::JobsAvailable(queue) => (AVAILABLE_CHANNEL, queue.unwrap_or_default()),
        StoreEvent::CancelRequested(id) => (CANCEL_CHANNEL, id.to_string()),
        StoreEvent::JobChanged(id) => (CHANGED_CHANNEL, id.to_string()),
        StoreEvent::SessionRevoked(hash) => (SESSION_CHANNEL, hash),
    }
}

async fn send_all(pool: Db, mut pending: mpsc::UnboundedReceiver<StoreEvent>) {
    while let Some(first) = pending.recv().await {
        // Everything that queued up while the last batch was sent goes in
        // the next one; repeats fold into one.
        let mut batch = BTreeSet::from([notice(first)]);
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(event) => {
                    batch.insert(notice(event));
                }
                Err(_) => break,
            }
        }
        let (channels, payloads): (Vec<&str>, Vec<String>) = batch.into_iter().unzip();
        let sent = sqlx::query(
            "WITH quick AS (SELECT set_config('synchronous_commit', 'off', true))
             SELECT count(pg_notify(c, p)) FROM quick, unnest($1::text[], $2::text[]) AS t(c, p)",
        )
        .bind(&channels)
        .bind(&payloads)
        .execute(&pool)
        .await;
        if let Err(e) = sent {
            // Reported, and covered by the workers' poll and the clients'
            // re-reads; retrying would only delay the next batch.
            tracing::warn!(error = %e, notifications = channels.len(), "job notifications not sent");
        }
    }
}
