//! Data exports: a portable copy of the account (its owner's right), made
//! by a `data_export` job and fetched by a signed, expiring link.
//!
//! Exports stay open to restricted accounts (`CurrentUser`, not
//! `ActiveUser`): restriction stops kiln processing the account's data
//! for its own ends, while a copy for its owner is the right of access
//! itself, which the law keeps during a restriction (it reads and packs
//! what is stored; nothing is generated, changed or shared). Refusing it
//! would make restricting an account a way to lose sight of its data.

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kiln_jobs::{DataExport, Job, UserId};
use kiln_store::subject_requests::{NewRequest, RequestKind};
use kiln_store::{JobState, NewJob, StoreError, generations::JobFilter};

use crate::{
    AppState, Json, Problem, auth::CurrentUser, idempotency, problem::parse_id,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me/exports", post(create))
        .route("/v1/me/exports/{id}", get(show))
}

#[utoipa::path(post, path = "/v1/me/exports", tag = "accounts",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "the same key returns the same export")),
    responses(
        (status = 202, description = "an export of your account is under way; poll it at `Location` (`GET /v1/me/exports/{id}`): once it succeeded, its result has a signed `url` to the ZIP. Open to restricted accounts: a copy of your data is your right of access", body = JobResource),
        (status = 200, description = "the export an earlier request with this Idempotency-Key started", body = JobResource),
        (status = 400, description = "malformed header", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 409, description = "`conflict`: an export of yours is still under way (one at a time); its id is in the detail", body = Problem),
    ))]
async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let key = idempotency::key(&headers)?;
    let mut job = NewJob::of(&DataExport { user: user.id })
        .map_err(Problem::internal)?
        .owner(user.id);
    job.idempotency_key = key;
    // One export per account at a time: the database refuses a second
    // unfinished one (a unique index over `jobs`, migration 0022), so two
    // requests racing cannot both start one. A retry under the same key
    // finds its own export first and is answered with it.
    let enqueued = match state.store.enqueue(job).await {
        Ok(enqueued) => enqueued,
        Err(StoreError::OneAtATime) => return Err(under_way(&state, user.id).await),
        Err(e) => return Err(e.into()),
    };
    let job = state
        .store
        .get(enqueued.id)
        .await?
        .ok_or_else(|| Problem::internal("enqueued job vanished"))?;
    // A key is per kind and owner, and an export's payload is the owner:
    // a retried key always asked for the same thing. The export answers a
    // data-subject request, registered here (once per job), on a retry too:
    // the first try may have enqueued and then lost the database.
    state
        .store
        .record_request(NewRequest {
            user: user.id,
            kind: RequestKind::Export,
            job_id: Some(enqueued.id),
            answered: job.state == JobState::Succeeded,
        })
        .await?;
    let status = if enqueued.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/me/exports/{}", job.id);
    let body = state.job_resource(job).await?;
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The 409 for a second export, naming the one under way when it can.
async fn under_way(state: &AppState, user: UserId) -> Problem {
    let filter = JobFilter {
        kind: Some(DataExport::KIND.to_owned()),
        limit: 10,
        ..JobFilter::default()
    };
    let running = match state.store.jobs_of_owner(user, &filter).await {
        Ok(jobs) => jobs.into_iter().find(|j| !j.state.is_final()),
        Err(e) => return e.into(),
    };
    match running {
        Some(job) => Problem::conflict(format!(
            "an export of this account is under way (one at a time): GET /v1/me/exports/{}",
            job.id
        )),
        None => Problem::conflict("an export of this account is under way (one at a time)"),
    }
}

#[utoipa::path(get, path = "/v1/me/exports/{id}", tag = "accounts",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "the export's id (its job's)")),
    responses(
        (status = 200, description = "the export's job; once it succeeded, `result.url` is a link to the ZIP signed now, valid until `result.expires_at` (`api.export_link_ttl_secs`, never past `retention.export_days` after the export finished, when the file is deleted: then `url` is null and `expired` true)", body = JobResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such export (or not yours)", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<JobResource>, Problem> {
    let id = parse_id(&id, "export")?;
    match state.store.get(id).await? {
        Some(job) if job.owner == Some(user.id) && job.kind == DataExport::KIND => {
            Ok(Json(state.job_resource(job).await?))
        }
        _ => Err(Problem::not_found("export")),
    }
}
