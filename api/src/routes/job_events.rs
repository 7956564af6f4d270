//! `GET /v1/jobs/{id}/events`: a job's changes as a server-sent event
//! stream, for its owner. Each change of state, stage or progress is an
//! event whose id names that snapshot; the terminal event carries the
//! finished job and ends the stream. `Last-Event-ID` resumes: the stream
//! starts from the job as it is now and skips the snapshot the client saw
//! last, so nothing is repeated and the latest state is never missed
//! (intermediate progress a disconnected client did not see is superseded
//! by the current one). Changes are woken by the store's change events,
//! which Postgres carries between processes, so any `serve` process can
//! serve any job's stream.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use kiln_jobs::UserId;
use kiln_store::{JobRecord, StoreEvent};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::jobs::own_job;
use crate::{AppState, Path, Problem, auth::CurrentUser, problem::parse_id};

/// Streams one account may hold open in one process.
pub const MAX_STREAMS_PER_USER: u32 = 10;
/// A comment this often keeps proxies from closing a quiet stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Open streams per account in this process.
#[derive(Debug, Default)]
pub struct OpenStreams(Mutex<HashMap<UserId, u32>>);

/// One open stream; closing it (dropping the guard) frees its place.
pub struct StreamGuard {
    streams: Arc<OpenStreams>,
    user: UserId,
}

impl OpenStreams {
    /// A place for one more of `user`'s streams, unless `max` are open.
    pub fn open(self: &Arc<Self>, user: UserId, max: u32) -> Option<StreamGuard> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamGuard {
            streams: self.clone(),
            user,
        })
    }

    pub fn count(&self, user: UserId) -> u32 {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// The event id of a job's observable snapshot: equal ids, equal views.
fn snapshot_id(job: &JobRecord) -> String {
    format!(
        "{}.{}.{}.{}",
        job.attempt,
        job.state.as_str(),
        job.stage.as_deref().unwrap_or(""),
        job.progress
    )
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event received: the stream resumes after it"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: an event `change` (data: the job resource) for the job as it is and for each change of state, stage or progress, then `done` with the finished job, and the stream ends; a `: keep-alive` comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such job (or not yours)", body = Problem),
        (status = 429, description = "`rate_limited`: 10 streams of this account are open on this server", body = Problem),
    ))]
pub(super) async fn events(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = parse_id(&id, "job")?;
    // Subscribed before the first read, so no change falls between.
    let changes = state.store.subscribe();
    let job = own_job(&state, id, user.id).await?;
    let guard = state
        .streams
        .open(user.id, MAX_STREAMS_PER_USER)
        .ok_or_else(|| {
            Problem::rate_limited(
                Duration::from_secs(5),
                format!("{MAX_STREAMS_PER_USER} event streams are open already; close one first"),
            )
        })?;
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let follow = Follow {
        state,
        id,
        owner: user.id,
        changes,
        seen,
        next: Some(job),
        done: false,
        _guard: guard,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        f.next_event().await.map(|e| (Ok::<_, Infallible>(e), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("keep-alive"))
        .into_response())
}

/// One client following one job.
struct Follow {
    state: AppState,
    id: Uuid,
    owner: UserId,
    changes: broadcast::Receiver<StoreEvent>,
    /// The snapshot the client has (from `Last-Event-ID`, then each sent).
    seen: Option<String>,
    /// A read not yet looked at.
    next: Option<JobRecord>,
    done: bool,
    _guard: StreamGuard,
}

impl Follow {
    /// The next event, or None when the stream ends (the job finished, or
    /// is gone).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            let job = match self.next.take() {
                Some(job) => job,
                None => {
                    self.wait_for_change().await?;
                    match own_job(&self.state, self.id, self.owner).await {
                        Ok(job) => job,
                        // Woken as the database went away: the wake-up
                        // when it is back brings another look.
                        Err(p) if p.is_unavailable() => continue,
                        Err(_) => return None,
                    }
                }
            };
            let snapshot = snapshot_id(&job);
            let finished = job.state.is_final();
            if self.seen.as_deref() == Some(snapshot.as_str()) {
                // The client has this one (resumed after it): nothing to
                // repeat; a finished job has nothing more to say.
                self.done = finished;
                continue;
            }
            self.seen = Some(snapshot.clone());
            self.done = finished;
            let resource = self.state.job_resource(job).await.ok()?;
            let event = Event::default()
                .id(snapshot)
                .event(if finished { "done" } else { "change" })
                .json_data(resource)
                .ok()?;
            return Some(event);
        }
    }

    /// Waits until the job may have changed; None when no change can come
    /// any more (the store's channel closed).
    async fn wait_for_change(&mut self) -> Option<()> {
        loop {
            match self.changes.recv().await {
                Ok(event) if event.may_have_changed(self.id) => return Some(()),
                Ok(_) => {}
                // Missed some: read the job again, it may be among them.
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(()),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_holds_at_most_its_streams_and_a_closed_one_frees_its_place() {
        let streams = Arc::new(OpenStreams::default());
        let (ada, bob) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
        let held: Vec<StreamGuard> = (0..3).map(|_| streams.open(ada, 3).unwrap()).collect();
        assert!(streams.open(ada, 3).is_none());
        assert!(
            streams.open(bob, 3).is_some(),
            "another account has its own"
        );
        drop(held);
        assert_eq!(streams.count(ada), 0);
        assert!(streams.open(ada, 3).is_some());
    }
}
