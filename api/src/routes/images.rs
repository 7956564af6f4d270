use axum::{
    Router,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use kiln_store::SignatureError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState, Json, Path, Problem, Query, auth::CurrentUser, problem::parse_id,
    resources::ImageResource,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list))
        .route("/v1/images/{id}", get(show).delete(delete))
        .route("/v1/files/{*key}", get(file))
}

#[utoipa::path(get, path = "/v1/images/{id}", tag = "images",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "image id")),
    responses(
        (status = 200, description = "metadata and a signed, expiring URL", body = ImageResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such image (or not yours)", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<ImageResource>, Problem> {
    let id = parse_id(&id, "image")?;
    let image = state
        .store
        .image(id, user.id)
        .await?
        .ok_or_else(|| Problem::not_found("image"))?;
    Ok(Json(state.image_resource(&image)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImageListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImagePage {
    pub images: Vec<ImageResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/images", tag = "images",
    security(("bearer" = [])),
    params(ImageListQuery),
    responses(
        (status = 200, description = "the caller's images (generated and upscaled), newest first", body = ImagePage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 422, description = "bad limit or cursor", body = Problem),
    ))]
async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<ImageListQuery>,
) -> Result<Json<ImagePage>, Problem> {
    let (limit, before) = super::uuid_page(query.limit, query.cursor.as_deref())?;
    let mut rows = state
        .store
        .images_of_owner(user.id, before, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|i| i.id.to_string()))
        .flatten();
    Ok(Json(ImagePage {
        images: rows.iter().map(|i| state.image_resource(i)).collect(),
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/images/{id}", tag = "images",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "image id")),
    responses(
        (status = 204, description = "deleted at once: its bytes are gone and its links stop working"),
        (status = 401, description = "no valid token", body = Problem),
        (status = 404, description = "no such image (or not yours)", body = Problem),
    ))]
async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_id(&id, "image")?;
    let image = state
        .store
        .image(id, user.id)
        .await?
        .ok_or_else(|| Problem::not_found("image"))?;
    // Deleted on request at once: the bytes first, then the row. If either step fails
    // the image is still listed, so the client's retry finishes the job.
    state.objects.delete(&image.object_key).await?;
    state.store.delete_image(id, user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SignedQuery {
    /// Unix seconds after which the URL no longer works.
    pub expires: i64,
    /// Hex HMAC-SHA256 of the path and `expires`.
    pub signature: String,
}

#[utoipa::path(get, path = "/v1/files/{key}", tag = "images",
    params(("key" = String, Path, description = "object key, e.g. images/<id>.png"), SignedQuery),
    responses(
        (status = 200, description = "the object's bytes", content_type = "image/png"),
        (status = 400, description = "missing signature", body = Problem),
        (status = 403, description = "bad or expired signature", body = Problem),
        (status = 404, description = "no such object", body = Problem),
    ))]
async fn file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<SignedQuery>,
) -> Result<Response, Problem> {
    let path = format!("/v1/files/{key}");
    match state
        .signer
        .verify(&path, q.expires, &q.signature, Utc::now())
    {
        Ok(()) => {}
        Err(SignatureError::Expired) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "url_expired",
                "this link has expired",
            ));
        }
        Err(_) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "bad_signature",
                "this link is not valid",
            ));
        }
    }
    let bytes = state
        .objects
        .get(&key)
        .await?
        .ok_or_else(|| Problem::not_found("file"))?;
    let content_type = if key.ends_with(".png") {
        "image/png"
    } else if key.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        Body::from(bytes),
    )
        .into_response())
}
