use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use kiln_store::generations::{BatchEnqueued, GenerationEnqueued};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    AppState, Json, Problem,
    auth::ActiveUser,
    generation_request::{GenerationBatchRequest, GenerationRequest, new_generation_batch},
    idempotency,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/generations", post(create))
        .route("/v1/generations/batch", post(create_batch))
}

#[utoipa::path(post, path = "/v1/generations", tag = "generations",
    security(("bearer" = [])),
    request_body = GenerationRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "the same key with the same body returns the same job; with another body, 409")),
    responses(
        (status = 202, description = "enqueued; poll the job at `Location`", body = JobResource),
        (status = 200, description = "the job an earlier request with this Idempotency-Key made", body = JobResource),
        (status = 400, description = "malformed JSON or header", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`restricted`: you restricted your account, so it starts no new jobs", body = Problem),
        (status = 402, description = "`insufficient_credits`: the balance is short of the price; nothing was enqueued", body = Problem),
        (status = 409, description = "Idempotency-Key reused with another body", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "empty or oversized prompt, bad size, model, n or reference_image_urls; a webhook_url that is not https (`invalid_input`) or resolves to a private address (`address_not_allowed`); a webhook without a signing secret (`webhook_secret_missing`)", body = Problem),
    ))]
async fn create(
    State(state): State<AppState>,
    ActiveUser(user): ActiveUser,
    headers: HeaderMap,
    Json(req): Json<GenerationRequest>,
) -> Result<Response, Problem> {
    let mut spec = req.parse(&state.config)?;
    spec.check_webhook(&state, user.id).await?;
    let idempotency_key = idempotency::key(&headers)?;
    let outcome = state
        .store
        .create_generation(spec.into_new_generation(user.id, idempotency_key, &state.credits))
        .await?;
    let (status, job) = match outcome {
        GenerationEnqueued::Created { job } => (StatusCode::ACCEPTED, *job),
        GenerationEnqueued::Existing { job_id } => (
            StatusCode::OK,
            state
                .store
                .get(job_id)
                .await?
                .ok_or_else(|| Problem::internal("enqueued job vanished"))?,
        ),
        GenerationEnqueued::KeyReused => {
            return Err(Problem::conflict(
                "this Idempotency-Key was used with a different request",
            ));
        }
    };
    let job_id = job.id;
    let body = state.job_resource(job).await?;
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{job_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The jobs of a batch, in the order of its items.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchJobs {
    pub jobs: Vec<JobResource>,
}

#[utoipa::path(post, path = "/v1/generations/batch", tag = "generations",
    security(("bearer" = [])),
    request_body = GenerationBatchRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "one key for the whole batch: the same key with the same items returns the same jobs; with other items, 409")),
    responses(
        (status = 202, description = "every item enqueued, in one transaction; poll each job", body = BatchJobs),
        (status = 200, description = "the jobs an earlier request with this Idempotency-Key made", body = BatchJobs),
        (status = 400, description = "malformed JSON or header", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`restricted`: you restricted your account, so it starts no new jobs", body = Problem),
        (status = 402, description = "`insufficient_credits`: the balance is short of the price; nothing was enqueued", body = Problem),
        (status = 409, description = "Idempotency-Key reused with other items", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "no items or more than 100, or an item that `POST /v1/generations` would refuse (named by its position)", body = Problem),
    ))]
async fn create_batch(
    State(state): State<AppState>,
    ActiveUser(user): ActiveUser,
    headers: HeaderMap,
    Json(req): Json<GenerationBatchRequest>,
) -> Result<Response, Problem> {
    let mut specs = req.parse(&state.config)?;
    for (i, spec) in specs.iter_mut().enumerate() {
        spec.check_webhook(&state, user.id)
            .await
            .map_err(|p| p.at_item(i))?;
    }
    let idempotency_key = idempotency::key(&headers)?;
    let outcome = state
        .store
        .create_generation_batch(new_generation_batch(
            specs,
            user.id,
            idempotency_key,
            &state.credits,
        ))
        .await?;
    let (status, job_ids) = match outcome {
        BatchEnqueued::Created { job_ids } => (StatusCode::ACCEPTED, job_ids),
        BatchEnqueued::Existing { job_ids } => (StatusCode::OK, job_ids),
        BatchEnqueued::KeyReused => {
            return Err(Problem::conflict(
                "this Idempotency-Key was used with a different batch",
            ));
        }
    };
    let mut by_id: std::collections::HashMap<_, _> = state
        .store
        .get_many(&job_ids)
        .await?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
    let jobs = job_ids
        .iter()
        .map(|id| by_id.remove(id))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Problem::internal("an enqueued job vanished"))?;
    let body = BatchJobs {
        jobs: state.job_resources(jobs).await?,
    };
    Ok((status, Json(body)).into_response())
}
