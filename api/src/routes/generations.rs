use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use kiln_store::generations::GenerationEnqueued;

use crate::{
    AppState, Json, Problem, auth::CurrentUser, generation_request::GenerationRequest, idempotency,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/generations", post(create))
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
        (status = 409, description = "Idempotency-Key reused with another body", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "empty or oversized prompt, bad size, model, n or reference_image_urls", body = Problem),
    ))]
async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Json(req): Json<GenerationRequest>,
) -> Result<Response, Problem> {
    let spec = req.parse(&state.config)?;
    let idempotency_key = idempotency::key(&headers)?;
    let outcome = state
        .store
        .create_generation(spec.into_new_generation(user.id, idempotency_key))
        .await?;
    let (status, job_id) = match outcome {
        GenerationEnqueued::Created { job_id } => (StatusCode::ACCEPTED, job_id),
        GenerationEnqueued::Existing { job_id } => (StatusCode::OK, job_id),
        GenerationEnqueued::KeyReused => {
            return Err(Problem::conflict(
                "this Idempotency-Key was used with a different request",
            ));
        }
    };
    let job = state
        .store
        .get(job_id)
        .await?
        .ok_or_else(|| Problem::internal("enqueued job vanished"))?;
    let body = state.job_resource(job).await?;
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{job_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
