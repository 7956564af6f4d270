use std::time::Duration;

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use kiln_jobs::UserId;
use kiln_store::{CancelOutcome, JobRecord, JobState, generations::JobFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Json, Path, Problem, Query, auth::CurrentUser, problem::parse_id,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/events", get(super::job_events::events))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/deliveries", get(deliveries))
}

/// Longest long-poll.
const MAX_WAIT_SECS: u64 = 30;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait (at most 30) for the job to finish, or with
    /// `until=change` for its next change of state, stage or progress.
    pub wait: Option<u64>,
    /// `finished` (the default) or `change`.
    #[param(inline, example = "change")]
    pub until: Option<Until>,
}

/// What a long-poll waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// The job succeeded, failed or was cancelled.
    #[default]
    Finished,
    /// Any change of state, stage or progress (to follow the stages).
    Change,
}

pub(super) async fn own_job(
    state: &AppState,
    id: Uuid,
    owner: UserId,
) -> Result<JobRecord, Problem> {
    match state.store.get(id).await? {
        Some(job) if job.owner == Some(owner) => Ok(job),
        _ => Err(Problem::not_found("job")),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id"), WaitQuery),
    responses(
        (status = 200, description = "the job", body = JobResource),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such job (or not yours)", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<JobResource>, Problem> {
    let id = parse_id(&id, "job")?;
    // Subscribe before reading, so a change between the read and the wait
    // is not missed.
    let mut events = state.store.subscribe();
    let job = own_job(&state, id, user.id).await?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    if wait.is_zero() || job.state.is_final() {
        return Ok(Json(state.job_resource(job).await?));
    }
    let seen = (job.state, job.stage.clone(), job.progress);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let woke = tokio::time::timeout_at(deadline, events.recv()).await;
        let recheck = match woke {
            Err(_) => break,
            Ok(Ok(event)) => event.may_have_changed(id),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => true,
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(deadline).await;
                break;
            }
        };
        if recheck {
            let now = match own_job(&state, id, user.id).await {
                Ok(now) => now,
                // Woken as the database went away: wait on for the
                // wake-up when it is back, or the deadline.
                Err(p) if p.is_unavailable() => continue,
                Err(p) => return Err(p),
            };
            let answered = match query.until.unwrap_or_default() {
                Until::Finished => now.state.is_final(),
                Until::Change => (now.state, now.stage.clone(), now.progress) != seen,
            };
            if answered {
                return Ok(Json(state.job_resource(now).await?));
            }
        }
    }
    let job = own_job(&state, id, user.id).await?;
    Ok(Json(state.job_resource(job).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "the caller's jobs, newest first", body = JobPage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 422, description = "unknown state or bad limit or cursor", body = Problem),
    ))]
async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, Problem> {
    let (limit, before) = super::uuid_page(query.limit, query.cursor.as_deref())?;
    let job_state = match query.state.as_deref() {
        None => None,
        Some(s) => Some(
            JobState::parse(s)
                .ok_or_else(|| Problem::invalid(format!("state {s:?} is not a job state")))?,
        ),
    };
    if query.kind.as_deref().is_some_and(|k| k.contains('\0')) {
        return Err(Problem::invalid("kind must not contain NUL characters"));
    }
    let filter = JobFilter {
        state: job_state,
        kind: query.kind,
        before,
        limit: limit + 1,
    };
    let mut rows = state.store.jobs_of_owner(user.id, &filter).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|j| j.id.to_string()))
        .flatten();
    let jobs = state.job_resources(rows).await?;
    Ok(Json(JobPage { jobs, next_cursor }))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "cancelled, or cancelling when running; its unfinished follow-ups (`children`) are cancelled too, also after it succeeded", body = JobResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such job (or not yours)", body = Problem),
        (status = 409, description = "the job has already finished", body = Problem),
    ))]
async fn cancel(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobResource>), Problem> {
    let id = parse_id(&id, "job")?;
    let outcome = state.store.cancel(id, Some(user.id)).await?;
    // Its follow-ups go with it, even once it has succeeded.
    let children = match outcome {
        CancelOutcome::NotFound => 0,
        _ => state.store.cancel_children(id, Some(user.id)).await?,
    };
    match outcome {
        CancelOutcome::NotFound => Err(Problem::not_found("job")),
        CancelOutcome::AlreadyFinished(_) if children > 0 => {
            let job = own_job(&state, id, user.id).await?;
            Ok((StatusCode::OK, Json(state.job_resource(job).await?)))
        }
        CancelOutcome::AlreadyFinished(s) => Err(Problem::conflict(format!(
            "the job has already finished ({})",
            s.as_str()
        ))),
        CancelOutcome::Cancelled | CancelOutcome::Cancelling => {
            let job = own_job(&state, id, user.id).await?;
            // A cancelled export is a request withdrawn: the register
            // shows it answered, not overdue in 30 days.
            if job.kind == <kiln_jobs::DataExport as kiln_jobs::Job>::KIND {
                state.store.answer_requests_of_job(id).await?;
            }
            Ok((StatusCode::OK, Json(state.job_resource(job).await?)))
        }
    }
}

/// One attempt to deliver one of a job's webhook events.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResource {
    /// The `webhook-id` header: the same on every attempt of one event.
    pub event_id: Uuid,
    /// `job.completed` or `job.changed`.
    pub event: String,
    /// 1 for the first attempt of this event.
    pub attempt: u32,
    /// The receiver's answer; null when none came (timeout, refused
    /// connection, an address that is not allowed).
    pub status_code: Option<u16>,
    /// `delivered` (2xx), `retrying` (another attempt follows) or `failed`
    /// (no attempt follows).
    #[schema(value_type = String, example = "delivered")]
    pub outcome: kiln_store::webhooks::DeliveryOutcome,
    /// Why it was not delivered: `status_503`, `connection_failed`,
    /// `redirect_refused`, `address_not_allowed`, ...
    pub error: Option<String>,
    pub duration_ms: u32,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A job's delivery attempts, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deliveries {
    pub deliveries: Vec<DeliveryResource>,
}

/// The most attempts listed (an event is tried at most 24 times).
const MAX_DELIVERIES: u32 = 500;

#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "every attempt to deliver the job's webhook events (oldest first, at most 500); empty without a webhook", body = Deliveries),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such job (or not yours)", body = Problem),
    ))]
async fn deliveries(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Deliveries>, Problem> {
    let id = parse_id(&id, "job")?;
    let job = own_job(&state, id, user.id).await?;
    let deliveries = state
        .store
        .deliveries(job.id, MAX_DELIVERIES)
        .await?
        .into_iter()
        .map(|d| DeliveryResource {
            event_id: d.event_id,
            event: d.event,
            attempt: d.attempt,
            status_code: d.status_code,
            outcome: d.outcome,
            error: d.error,
            duration_ms: d.duration_ms,
            at: d.at,
        })
        .collect();
    Ok(Json(Deliveries { deliveries }))
}
