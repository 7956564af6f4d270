use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use kiln_store::generations::{GenerationEnqueued, NewGeneration};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::{
    AppState, Json, Problem, auth::CurrentUser, config::parse_size, idempotency,
    resources::JobResource,
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/generations", post(create))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// What to draw; 1 to `api.max_prompt_chars` characters.
    pub prompt: String,
    /// One of `api.models`; default `api.default_model`.
    pub model: Option<String>,
    /// `WIDTHxHEIGHT`, one of `api.sizes`; default `1024x1024`.
    pub size: Option<String>,
    /// Images to make, 1 to `api.max_images`; default 1.
    pub n: Option<u32>,
    /// Up to `api.max_reference_images` https URLs of images to start
    /// from. kiln fetches each once (public addresses only, no redirects,
    /// images only, size-capped) and gives the provider its own copy.
    pub reference_image_urls: Option<Vec<String>>,
}

/// The longest reference URL accepted.
const MAX_URL_LEN: usize = 2048;

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
    let config = &state.config;
    let prompt = req.prompt.trim().to_owned();
    if prompt.is_empty() {
        return Err(Problem::invalid("prompt must not be empty"));
    }
    if prompt.chars().count() > config.max_prompt_chars {
        return Err(Problem::invalid(format!(
            "prompt is longer than {} characters",
            config.max_prompt_chars
        )));
    }
    let model = req.model.unwrap_or_else(|| config.default_model.clone());
    if !config.models.contains(&model) {
        return Err(Problem::invalid(format!(
            "model must be one of {:?}",
            config.models
        )));
    }
    let size = req.size.unwrap_or_else(|| "1024x1024".to_owned());
    let (width, height) = match parse_size(&size) {
        Some(wh) if config.sizes.contains(&size) => wh,
        _ => {
            return Err(Problem::invalid(format!(
                "size must be one of {:?}",
                config.sizes
            )));
        }
    };
    let n = req.n.unwrap_or(1);
    if !(1..=config.max_images).contains(&n) {
        return Err(Problem::invalid(format!(
            "n must be between 1 and {}",
            config.max_images
        )));
    }
    let reference_urls = req.reference_image_urls.unwrap_or_default();
    if reference_urls.len() > config.max_reference_images {
        return Err(Problem::invalid(format!(
            "at most {} reference_image_urls",
            config.max_reference_images
        )));
    }
    for url in &reference_urls {
        let parsed = url::Url::parse(url).ok();
        let web = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
        if !web || url.len() > MAX_URL_LEN {
            return Err(Problem::invalid(format!(
                "reference_image_urls must be http(s) URLs of at most {MAX_URL_LEN} characters"
            )));
        }
    }
    let idempotency_key = idempotency::key(&headers)?;
    // The canonical request, to compare idempotent retries.
    let canonical = serde_json::json!({
        "prompt": prompt, "model": model, "size": size, "n": n,
        "reference_image_urls": reference_urls,
    });
    let request_hash = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
    let outcome = state
        .store
        .create_generation(NewGeneration {
            owner: user.id,
            prompt,
            model,
            width,
            height,
            n,
            reference_urls,
            request_hash,
            idempotency_key,
        })
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
