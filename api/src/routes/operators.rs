//! The operators' queue and job API (operator role required; others 403
//! `forbidden`): the queue overview, the job list and one job's detail,
//! retry/discard/cancel of one job or of a filter's worth, and pause,
//! resume and the concurrency limit of a queue. Every action, and every
//! read of one job in full, goes into the access log with the operator,
//! the IP and what it touched.

use axum::{
    Router,
    extract::State,
    routing::{get, post, put},
};
use chrono::{DateTime, Utc};
use kiln_jobs::{UserId, catalogue};
use kiln_store::{
    CancelOutcome, JobRecord, JobState,
    access_log::{AccessEvent, Origin},
    operators::{JobFilter, QueueOverview, WINDOWS},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Json, Path, Problem, Query,
    auth::{ClientOrigin, Operator},
    problem::parse_id,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/queues", get(queues))
        .route("/admin/v1/queues/{queue}/pause", post(pause))
        .route("/admin/v1/queues/{queue}/resume", post(resume))
        .route("/admin/v1/queues/{queue}/concurrency", put(concurrency))
        .route("/admin/v1/jobs", get(list))
        .route("/admin/v1/jobs/bulk", post(bulk))
        .route("/admin/v1/jobs/{id}", get(show))
        .route("/admin/v1/jobs/{id}/retry", post(retry))
        .route("/admin/v1/jobs/{id}/discard", post(discard))
        .route("/admin/v1/jobs/{id}/cancel", post(cancel))
}

/// The largest concurrency limit a queue takes.
const MAX_CONCURRENCY: u32 = 100_000;

/// Jobs by state: waiting, running, and dead (`failed`).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueCounts {
    pub scheduled: i64,
    pub available: i64,
    pub running: i64,
    pub retryable: i64,
    /// Dead jobs, kept for operators to retry or discard.
    pub failed: i64,
}

/// Jobs that ended within the last `minutes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Throughput {
    pub minutes: u32,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResource {
    pub queue: String,
    pub counts: QueueCounts,
    /// Seconds the oldest due job has waited; null when none waits.
    pub oldest_due_age_secs: Option<f64>,
    pub paused: bool,
    /// At most this many of the queue's jobs run at once across all
    /// workers; null: no limit.
    pub concurrency_limit: Option<u32>,
    /// Over the last 1, 5 and 60 minutes.
    pub throughput: Vec<Throughput>,
}

impl From<QueueOverview> for QueueResource {
    fn from(q: QueueOverview) -> QueueResource {
        let count = |s: JobState| q.counts.get(&s).copied().unwrap_or(0);
        let throughput = WINDOWS
            .iter()
            .zip(&q.finished)
            .map(|(minutes, ended)| {
                let n = |s: JobState| ended.get(&s).copied().unwrap_or(0);
                Throughput {
                    minutes: *minutes,
                    succeeded: n(JobState::Succeeded),
                    failed: n(JobState::Failed),
                    cancelled: n(JobState::Cancelled),
                }
            })
            .collect();
        QueueResource {
            counts: QueueCounts {
                scheduled: count(JobState::Scheduled),
                available: count(JobState::Available),
                running: count(JobState::Running),
                retryable: count(JobState::Retryable),
                failed: count(JobState::Failed),
            },
            oldest_due_age_secs: q.oldest_due_age.map(|d| d.as_secs_f64()),
            paused: q.paused,
            concurrency_limit: q.concurrency_limit,
            throughput,
            queue: q.queue,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueResource>,
}

#[utoipa::path(get, path = "/admin/v1/queues", tag = "operators",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every queue: counts by state, the oldest due job's age, paused, concurrency limit, jobs ended in the last 1/5/60 minutes", body = QueueList),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
    ))]
async fn queues(
    State(state): State<AppState>,
    Operator(_operator): Operator,
) -> Result<Json<QueueList>, Problem> {
    let queues = state.store.queue_overview().await?;
    Ok(Json(QueueList {
        queues: queues.into_iter().map(QueueResource::from).collect(),
    }))
}

/// A queue of the catalogue; any other name answers 404.
fn known_queue(queue: &str) -> Result<(), Problem> {
    if catalogue::is_queue(queue) {
        Ok(())
    } else {
        Err(Problem::not_found("queue"))
    }
}

/// A queue's settings after an operator changed them.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSettingsResource {
    pub queue: String,
    pub paused: bool,
    pub concurrency_limit: Option<u32>,
}

async fn settings_of(state: &AppState, queue: &str) -> Result<QueueSettingsResource, Problem> {
    let row = state
        .store
        .queue_settings()
        .await?
        .into_iter()
        .find(|s| s.name == queue);
    Ok(QueueSettingsResource {
        queue: queue.to_owned(),
        paused: row.as_ref().is_some_and(|s| s.paused),
        concurrency_limit: row.and_then(|s| s.concurrency_limit),
    })
}

/// Writes an operator's action into the access log.
async fn audit(
    state: &AppState,
    operator: UserId,
    event: AccessEvent,
    origin: &Origin,
    detail: Value,
) -> Result<(), Problem> {
    state
        .store
        .record_audit(operator, event, origin, &detail)
        .await?;
    tracing::info!(%operator, event = event.as_str(), %detail, "operator action");
    Ok(())
}

#[utoipa::path(post, path = "/admin/v1/queues/{queue}/pause", tag = "operators",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "a queue of the catalogue")),
    responses(
        (status = 200, description = "paused: no worker process claims its jobs until it is resumed (running ones finish)", body = QueueSettingsResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such queue", body = Problem),
    ))]
async fn pause(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(queue): Path<String>,
) -> Result<Json<QueueSettingsResource>, Problem> {
    known_queue(&queue)?;
    state.store.pause_queue(&queue).await?;
    let detail = json!({"queue": queue});
    audit(
        &state,
        operator,
        AccessEvent::OperatorQueuePaused,
        &origin,
        detail,
    )
    .await?;
    Ok(Json(settings_of(&state, &queue).await?))
}

#[utoipa::path(post, path = "/admin/v1/queues/{queue}/resume", tag = "operators",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "a queue of the catalogue")),
    responses(
        (status = 200, description = "resumed: its jobs are claimed again at once", body = QueueSettingsResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such queue", body = Problem),
    ))]
async fn resume(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(queue): Path<String>,
) -> Result<Json<QueueSettingsResource>, Problem> {
    known_queue(&queue)?;
    state.store.resume_queue(&queue).await?;
    let detail = json!({"queue": queue});
    audit(
        &state,
        operator,
        AccessEvent::OperatorQueueResumed,
        &origin,
        detail,
    )
    .await?;
    Ok(Json(settings_of(&state, &queue).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyRequest {
    /// 1 to 100000 jobs of the queue running at once, across all workers;
    /// null or absent: no limit.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[utoipa::path(put, path = "/admin/v1/queues/{queue}/concurrency", tag = "operators",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "a queue of the catalogue")),
    request_body = ConcurrencyRequest,
    responses(
        (status = 200, description = "the limit is set (or cleared); every worker obeys it within a second, without a restart", body = QueueSettingsResource),
        (status = 400, description = "malformed body", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such queue", body = Problem),
        (status = 415, description = "not JSON", body = Problem),
        (status = 422, description = "a limit below 1 or above 100000", body = Problem),
    ))]
async fn concurrency(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(queue): Path<String>,
    Json(body): Json<ConcurrencyRequest>,
) -> Result<Json<QueueSettingsResource>, Problem> {
    known_queue(&queue)?;
    if let Some(limit) = body.limit
        && !(1..=MAX_CONCURRENCY).contains(&limit)
    {
        return Err(Problem::invalid(format!(
            "limit must be between 1 and {MAX_CONCURRENCY}, or null for none"
        )));
    }
    state
        .store
        .set_concurrency_limit(&queue, body.limit)
        .await?;
    let detail = json!({"queue": queue, "limit": body.limit});
    audit(
        &state,
        operator,
        AccessEvent::OperatorQueueConcurrency,
        &origin,
        detail,
    )
    .await?;
    Ok(Json(settings_of(&state, &queue).await?))
}

/// One failed attempt as the list shows it: its code, not its message
/// (free text from handlers and providers, which may quote a prompt; the
/// audited detail has it).
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptError {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub code: String,
    pub permanent: bool,
}

/// A job as operators list it: no payload, result, error text or
/// idempotency key (personal data stays in the audited detail).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorJob {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    /// The account it works for; null for system jobs.
    #[schema(value_type = Option<Uuid>)]
    pub owner: Option<UserId>,
    #[schema(value_type = String, example = "failed")]
    pub state: JobState,
    pub stage: Option<String>,
    pub progress: i16,
    pub priority: i16,
    pub attempt: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

impl From<&JobRecord> for OperatorJob {
    fn from(j: &JobRecord) -> OperatorJob {
        OperatorJob {
            id: j.id,
            kind: j.kind.clone(),
            queue: j.queue.clone(),
            owner: j.owner,
            state: j.state,
            stage: j.stage.clone(),
            progress: j.progress,
            priority: j.priority,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            cancel_requested: j.cancel_requested,
            run_at: j.run_at,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            errors: j
                .errors
                .iter()
                .map(|e| AttemptError {
                    attempt: e.attempt,
                    at: e.at,
                    code: e.code.clone(),
                    permanent: e.permanent,
                })
                .collect(),
        }
    }
}

/// One failed attempt in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptErrorDetail {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub code: String,
    pub message: String,
    pub permanent: bool,
}

/// One job in full, payload included (reading it is audited).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorJobDetail {
    #[serde(flatten)]
    pub job: OperatorJob,
    pub payload: Value,
    pub schema_version: i32,
    pub result: Option<Value>,
    /// Every failed attempt with its message, oldest first.
    pub error_messages: Vec<AttemptErrorDetail>,
    pub idempotency_key: Option<String>,
    /// The worker holding it, while it runs.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Times a worker was lost while running it.
    pub rescues: u32,
}

impl From<JobRecord> for OperatorJobDetail {
    fn from(j: JobRecord) -> OperatorJobDetail {
        OperatorJobDetail {
            job: OperatorJob::from(&j),
            error_messages: j
                .errors
                .into_iter()
                .map(|e| AttemptErrorDetail {
                    attempt: e.attempt,
                    at: e.at,
                    code: e.code,
                    message: e.message,
                    permanent: e.permanent,
                })
                .collect(),
            payload: j.payload,
            schema_version: j.schema_version,
            result: j.result,
            idempotency_key: j.idempotency_key,
            lease_owner: j.lease_owner,
            lease_expires_at: j.lease_expires_at,
            rescues: j.rescues,
        }
    }
}

/// Which jobs: every field given must match.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterFields {
    #[schema(value_type = Option<String>, example = "failed")]
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// An account id.
    pub owner: Option<Uuid>,
}

impl FilterFields {
    /// The store's filter; a kind or queue the catalogue does not know is
    /// refused (a typo would match nothing, silently).
    fn filter(&self) -> Result<JobFilter, Problem> {
        if let Some(kind) = &self.kind
            && catalogue::spec(kind).is_none()
        {
            return Err(Problem::invalid(format!("no job kind {kind:?}")));
        }
        if let Some(queue) = &self.queue
            && !catalogue::is_queue(queue)
        {
            return Err(Problem::invalid(format!("no queue {queue:?}")));
        }
        Ok(JobFilter {
            state: self.state,
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            owner: self.owner.map(UserId),
            id: None,
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    #[param(value_type = Option<String>, example = "failed")]
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// An account id.
    pub owner: Option<Uuid>,
    /// Jobs per page: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorJobPage {
    /// Newest first.
    pub jobs: Vec<OperatorJob>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/jobs", tag = "operators",
    security(("bearer" = [])),
    params(JobQuery),
    responses(
        (status = 200, description = "jobs matching the filter, newest first, with the code of every failed attempt; no payload, result or error text", body = OperatorJobPage),
        (status = 400, description = "bad query (an unknown state)", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 422, description = "bad limit or cursor, unknown kind or queue", body = Problem),
    ))]
async fn list(
    State(state): State<AppState>,
    Operator(_operator): Operator,
    Query(query): Query<JobQuery>,
) -> Result<Json<OperatorJobPage>, Problem> {
    let (limit, before) = super::uuid_page(query.limit, query.cursor.as_deref())?;
    let filter = FilterFields {
        state: query.state,
        kind: query.kind,
        queue: query.queue,
        owner: query.owner,
    }
    .filter()?;
    let mut jobs = state
        .store
        .operator_jobs(&filter, before, limit + 1)
        .await?;
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let next_cursor = more
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(Json(OperatorJobPage {
        jobs: jobs.iter().map(OperatorJob::from).collect(),
        next_cursor,
    }))
}

async fn job(state: &AppState, id: &str) -> Result<JobRecord, Problem> {
    let id = parse_id(id, "job")?;
    state
        .store
        .get(id)
        .await?
        .ok_or_else(|| Problem::not_found("job"))
}

#[utoipa::path(get, path = "/admin/v1/jobs/{id}", tag = "operators",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "the job in full, payload and error messages included; the read is written to the access log", body = OperatorJobDetail),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such job", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
) -> Result<Json<OperatorJobDetail>, Problem> {
    let job = job(&state, &id).await?;
    let detail = json!({"job_id": job.id, "kind": job.kind});
    audit(
        &state,
        operator,
        AccessEvent::OperatorJobRead,
        &origin,
        detail,
    )
    .await?;
    Ok(Json(OperatorJobDetail::from(job)))
}

/// The job after an action, as the list shows it.
async fn after(state: &AppState, id: Uuid) -> Result<Json<OperatorJob>, Problem> {
    let job = state
        .store
        .get(id)
        .await?
        .ok_or_else(|| Problem::not_found("job"))?;
    Ok(Json(OperatorJob::from(&job)))
}

#[utoipa::path(post, path = "/admin/v1/jobs/{id}/retry", tag = "operators",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "a failed or cancelled job is available again (one more attempt if it used its last; its history kept; free of credits); a scheduled or retryable one is due now", body = OperatorJob),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such job", body = Problem),
        (status = 409, description = "the job is available, running or succeeded", body = Problem),
    ))]
async fn retry(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
) -> Result<Json<OperatorJob>, Problem> {
    let one = OneJob {
        state: &state,
        operator,
        origin: &origin,
    };
    one.act(
        &id,
        AccessEvent::OperatorJobRetried,
        "is not retried",
        async |f| state.store.retry_jobs(f).await,
    )
    .await
}

#[utoipa::path(post, path = "/admin/v1/jobs/{id}/discard", tag = "operators",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "the waiting job ended `failed` with a `discarded` error, its credits refunded", body = OperatorJob),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such job", body = Problem),
        (status = 409, description = "the job is running (cancel it) or finished", body = Problem),
    ))]
async fn discard(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
) -> Result<Json<OperatorJob>, Problem> {
    let one = OneJob {
        state: &state,
        operator,
        origin: &origin,
    };
    let refusal = "is not discarded; only waiting ones are";
    one.act(&id, AccessEvent::OperatorJobDiscarded, refusal, async |f| {
        state.store.discard_jobs(f).await
    })
    .await
}

/// An operator's action on one job through the bulk path's filter (retry,
/// discard): 409 when it does not apply to the job's state, audited with
/// the state it was in, answered with the job as it is now.
struct OneJob<'a> {
    state: &'a AppState,
    operator: UserId,
    origin: &'a Origin,
}

impl OneJob<'_> {
    async fn act(
        &self,
        id: &str,
        event: AccessEvent,
        refusal: &str,
        apply: impl AsyncFnOnce(&JobFilter) -> Result<u64, kiln_store::StoreError>,
    ) -> Result<Json<OperatorJob>, Problem> {
        let job = job(self.state, id).await?;
        if apply(&JobFilter::job(job.id)).await? == 0 {
            return Err(Problem::conflict(format!(
                "a {} job {refusal}",
                job.state.as_str()
            )));
        }
        let detail = json!({"job_id": job.id, "was": job.state.as_str()});
        audit(self.state, self.operator, event, self.origin, detail).await?;
        after(self.state, job.id).await
    }
}

#[utoipa::path(post, path = "/admin/v1/jobs/{id}/cancel", tag = "operators",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "cancelled (waiting: at once, credits refunded) or cancelling (running: its worker is told), as an owner's cancel", body = OperatorJob),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such job", body = Problem),
        (status = 409, description = "the job has finished", body = Problem),
    ))]
async fn cancel(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
) -> Result<Json<OperatorJob>, Problem> {
    let id = parse_id(&id, "job")?;
    // The owner's cancel path, for any owner.
    let outcome = match state.store.cancel(id, None).await? {
        CancelOutcome::NotFound => return Err(Problem::not_found("job")),
        CancelOutcome::AlreadyFinished(s) => {
            return Err(Problem::conflict(format!(
                "the job has finished ({})",
                s.as_str()
            )));
        }
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Cancelling => "cancelling",
    };
    let detail = json!({"job_id": id, "outcome": outcome});
    audit(
        &state,
        operator,
        AccessEvent::OperatorJobCancelled,
        &origin,
        detail,
    )
    .await?;
    after(&state, id).await
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    Retry,
    Discard,
    Cancel,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: BulkAction,
    /// At least one field: an empty filter would act on every job.
    pub filter: FilterFields,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    pub action: BulkAction,
    /// Jobs retried, discarded, or cancelled at once.
    pub count: u64,
    /// Running jobs whose workers were told to stop (cancel only).
    pub cancelling: u64,
}

#[utoipa::path(post, path = "/admin/v1/jobs/bulk", tag = "operators",
    security(("bearer" = [])),
    request_body = BulkRequest,
    responses(
        (status = 200, description = "the action applied to every job the filter matches, 1,000 per statement, each batch its own transaction; the counts (an action that outlasts the request timeout finishes anyway, its counts in the access log)", body = BulkResult),
        (status = 400, description = "malformed body", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 415, description = "not JSON", body = Problem),
        (status = 422, description = "unknown action, state, kind or queue; an empty filter", body = Problem),
        (status = 503, description = "`timeout`: still at work; the access log will have the counts", body = Problem),
    ))]
async fn bulk(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ClientOrigin(origin): ClientOrigin,
    Json(body): Json<BulkRequest>,
) -> Result<Json<BulkResult>, Problem> {
    let filter = body.filter.filter()?;
    if filter == JobFilter::default() {
        return Err(Problem::invalid(
            "give the filter at least one of state, kind, queue or owner",
        ));
    }
    // Its own task: a large action that outlasts the request's timeout
    // still finishes its batches and is still written to the log.
    let work = tokio::spawn(async move {
        let (count, cancelling) = match body.action {
            BulkAction::Retry => (state.store.retry_jobs(&filter).await?, 0),
            BulkAction::Discard => (state.store.discard_jobs(&filter).await?, 0),
            BulkAction::Cancel => state.store.cancel_jobs(&filter).await?,
        };
        let detail = json!({
            "action": body.action, "filter": body.filter, "count": count, "cancelling": cancelling,
        });
        audit(
            &state,
            operator,
            AccessEvent::OperatorBulkAction,
            &origin,
            detail,
        )
        .await?;
        Ok(BulkResult {
            action: body.action,
            count,
            cancelling,
        })
    });
    work.await.map_err(Problem::internal)?.map(Json)
}
