//! The operators' API (operator role required; others 403 `forbidden`).

use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use kiln_jobs::{OperatorExportKind, UserId};
use kiln_store::subject_requests::{RequestKind, SubjectRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{AppState, Json, Problem, Query, auth::Operator};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/subject-requests", get(subject_requests))
        .route("/admin/v1/exports", get(exports))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubjectRequestQuery {
    /// Only requests not answered by their due date.
    pub overdue: Option<bool>,
    /// Requests per page: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

/// One request an account's owner made about their data.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectRequestResource {
    pub id: Uuid,
    /// `access`, `export`, `correction`, `deletion` or `restriction`.
    #[schema(value_type = String, example = "export")]
    pub kind: RequestKind,
    /// The account; null once it was erased.
    #[schema(value_type = Option<Uuid>)]
    pub account_id: Option<UserId>,
    /// The job that answers it (an export, an account purge).
    pub job_id: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    /// 30 days after it was made.
    pub due_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub overdue: bool,
}

impl SubjectRequestResource {
    fn new(r: SubjectRequest, now: DateTime<Utc>) -> Self {
        SubjectRequestResource {
            overdue: r.is_overdue(now),
            id: r.id,
            kind: r.kind,
            account_id: r.user,
            job_id: r.job_id,
            requested_at: r.requested_at,
            due_at: r.due_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectRequestPage {
    /// Newest first.
    pub requests: Vec<SubjectRequestResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/subject-requests", tag = "operators",
    security(("bearer" = [])),
    params(SubjectRequestQuery),
    responses(
        (status = 200, description = "the register of data-subject requests, newest first, with their due dates; `overdue=true`: only those not answered in time", body = SubjectRequestPage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 422, description = "bad limit or cursor", body = Problem),
    ))]
async fn subject_requests(
    State(state): State<AppState>,
    Operator(operator): Operator,
    Query(query): Query<SubjectRequestQuery>,
) -> Result<Json<SubjectRequestPage>, Problem> {
    tracing::info!(%operator, "operator read the subject-request register");
    let (limit, before) = super::uuid_page(query.limit, query.cursor.as_deref())?;
    let now = Utc::now();
    let overdue_at = query.overdue.unwrap_or(false).then_some(now);
    let mut rows = state
        .store
        .subject_requests(overdue_at, before, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(SubjectRequestPage {
        requests: rows
            .into_iter()
            .map(|r| SubjectRequestResource::new(r, now))
            .collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Files per page: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

/// A scheduled export: a month of payment records or a day of the access
/// log, written to the bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorExportResource {
    pub id: Uuid,
    /// `accounting` (CSV) or `access_log` (gzipped JSON lines).
    #[schema(value_type = String, example = "accounting")]
    pub kind: OperatorExportKind,
    pub period_start: DateTime<Utc>,
    /// Exclusive.
    pub period_end: DateTime<Utc>,
    pub rows: u64,
    pub bytes: u64,
    pub created_at: DateTime<Utc>,
    /// When retention deletes it, with the records it holds (as the
    /// settings stood when it was written).
    pub expires_at: DateTime<Utc>,
    /// The `operator_export` job that wrote it.
    pub job_id: Option<Uuid>,
    /// A download link signed now.
    pub url: String,
    pub url_expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorExportPage {
    /// Newest first.
    pub exports: Vec<OperatorExportResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/exports", tag = "operators",
    security(("bearer" = [])),
    params(ExportQuery),
    responses(
        (status = 200, description = "the scheduled exports written (the monthly accounting CSV, the daily access-log archive), newest first, each with a download link signed now (`api.export_link_ttl_secs`)", body = OperatorExportPage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 422, description = "bad limit or cursor", body = Problem),
    ))]
async fn exports(
    State(state): State<AppState>,
    Operator(operator): Operator,
    Query(query): Query<ExportQuery>,
) -> Result<Json<OperatorExportPage>, Problem> {
    tracing::info!(%operator, "operator listed the scheduled exports");
    let (limit, before) = super::uuid_page(query.limit, query.cursor.as_deref())?;
    let mut rows = state.store.operator_exports(before, limit + 1).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let link = chrono::Duration::seconds(
        i64::try_from(state.config.export_link_ttl_secs).unwrap_or(i64::MAX / 1000),
    );
    let url_expires_at = Utc::now() + link;
    Ok(Json(OperatorExportPage {
        exports: rows
            .into_iter()
            .map(|r| OperatorExportResource {
                url: state.signer.object_url(&r.object_key, url_expires_at),
                url_expires_at,
                id: r.id,
                kind: r.kind,
                period_start: r.period_start,
                period_end: r.period_end,
                rows: r.rows,
                bytes: r.bytes,
                created_at: r.created_at,
                expires_at: r.expires_at,
                job_id: r.job_id,
            })
            .collect(),
        next_cursor,
    }))
}
