use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use kiln_store::access_log::{AccessEntry, AccessEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{AppState, Json, Problem, Query, auth::CurrentUser};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/me/access-log", get(access_log))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccessLogQuery {
    /// Entries per page: 1 to 100, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One thing that happened to your account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessEntryResource {
    pub id: String,
    /// `register`, `registration_attempt` (someone tried to sign up with
    /// your address), `verify`, `verify_failed`, `login`, `login_failed`,
    /// `logout`, `new_ip` (your account was used from an IP for the first
    /// time).
    #[schema(value_type = String, example = "login")]
    pub event: AccessEvent,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<AccessEntry> for AccessEntryResource {
    fn from(e: AccessEntry) -> Self {
        AccessEntryResource {
            id: e.id.to_string(),
            event: e.event,
            ip: e.ip,
            user_agent: e.user_agent,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessLogPage {
    /// Newest first.
    pub entries: Vec<AccessEntryResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/me/access-log", tag = "accounts",
    security(("bearer" = [])),
    params(AccessLogQuery),
    responses(
        (status = 200, description = "your account's access log, newest first: sign-ups, verifications, logins (and failed ones), logouts, first uses from a new IP, with time, IP and user agent", body = AccessLogPage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 422, description = "bad limit or cursor", body = Problem),
    ))]
async fn access_log(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<AccessLogQuery>,
) -> Result<Json<AccessLogPage>, Problem> {
    let (limit, before) = super::numeric_page(query.limit, query.cursor.as_deref())?;
    let mut entries = state.store.access_log(user.id, before, limit + 1).await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = more
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(AccessLogPage {
        entries: entries.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
