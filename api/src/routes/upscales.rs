use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use kiln_jobs::UpscaleImage;
use kiln_store::NewJob;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{
    AppState, Json, Problem, auth::ActiveUser, idempotency, problem::parse_id,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/upscales", post(create))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpscaleRequest {
    /// One of your images (from a generation's result).
    pub image_id: String,
    /// 2 or 4; default 2.
    pub scale: Option<u32>,
    /// As on `POST /v1/generations`: an https URL that hears of this job.
    pub webhook_url: Option<String>,
    /// `completed` (default) or `all`.
    #[schema(value_type = Option<String>, example = "completed")]
    pub webhook_events: Option<kiln_jobs::WebhookEvents>,
}

impl UpscaleRequest {
    /// The job this request asks for. An id that is not one is as absent
    /// as a missing image (404); the scale defaults to 2 and must be one of
    /// [`UpscaleImage::SCALES`].
    fn parse(&self) -> Result<UpscaleImage, Problem> {
        let image_id = parse_id(&self.image_id, "image")?;
        let scale = self.scale.unwrap_or(2);
        if !UpscaleImage::SCALES.contains(&scale) {
            return Err(Problem::invalid(format!(
                "scale must be one of {:?}",
                UpscaleImage::SCALES
            )));
        }
        Ok(UpscaleImage { image_id, scale })
    }
}

#[utoipa::path(post, path = "/v1/upscales", tag = "upscales",
    security(("bearer" = [])),
    request_body = UpscaleRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "the same key with the same body returns the same job; with another body, 409")),
    responses(
        (status = 202, description = "enqueued; poll the job at `Location`; its result names the new image", body = JobResource),
        (status = 200, description = "the job an earlier request with this Idempotency-Key made", body = JobResource),
        (status = 400, description = "malformed JSON or header", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`restricted`: you restricted your account, so it starts no new jobs", body = Problem),
        (status = 402, description = "`insufficient_credits`: the balance is short of the price; nothing was enqueued", body = Problem),
        (status = 404, description = "no such image of yours", body = Problem),
        (status = 409, description = "Idempotency-Key reused with another body", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "scale is not 2 or 4; a bad webhook_url (`invalid_input`, `address_not_allowed`) or no signing secret (`webhook_secret_missing`)", body = Problem),
    ))]
async fn create(
    State(state): State<AppState>,
    ActiveUser(user): ActiveUser,
    headers: HeaderMap,
    Json(req): Json<UpscaleRequest>,
) -> Result<Response, Problem> {
    let payload = req.parse()?;
    let webhook = crate::webhook::target(
        &state,
        user.id,
        req.webhook_url.as_deref(),
        req.webhook_events,
    )
    .await?;
    let key = idempotency::key(&headers)?;
    // Another user's image is as absent as a missing one.
    state
        .store
        .image(payload.image_id, user.id)
        .await?
        .ok_or_else(|| Problem::not_found("image"))?;

    let mut job = NewJob::of(&payload)
        .map_err(Problem::internal)?
        .owner(user.id)
        .reserving(state.credits.upscale(payload.scale))
        .webhook(webhook);
    job.idempotency_key = key;
    let enqueued = state.store.enqueue(job).await?;
    let job = state
        .store
        .get(enqueued.id)
        .await?
        .ok_or_else(|| Problem::internal("enqueued job vanished"))?;
    let status = if enqueued.created {
        StatusCode::ACCEPTED
    } else if serde_json::from_value::<UpscaleImage>(job.payload.clone()).ok() == Some(payload) {
        StatusCode::OK
    } else {
        return Err(Problem::conflict(
            "this Idempotency-Key was used with a different request",
        ));
    };
    let location = format!("/v1/jobs/{}", job.id);
    let body = state.job_resource(job).await?;
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
