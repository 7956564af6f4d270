use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use kiln_store::credits::{CreditEntry, EntryKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{AppState, Json, Problem, Query, auth::CurrentUser};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/credits", get(show))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreditsQuery {
    /// Entries per page: 1 to 100, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (an entry id).
    pub cursor: Option<String>,
}

/// One ledger entry. `amount` is positive; `kind` says where it moved:
/// `grant` and `purchase` add to the balance, `reserve` holds credits for
/// a job, `charge` spends a hold (the job succeeded), `refund` returns it
/// (the job failed, was blocked or cancelled).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditEntryResource {
    pub id: String,
    #[schema(value_type = String, example = "reserve")]
    pub kind: EntryKind,
    pub amount: u64,
    /// `signup`, `referral`, `referral:<id>` or the job's kind.
    pub reason: String,
    pub job_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<CreditEntry> for CreditEntryResource {
    fn from(e: CreditEntry) -> Self {
        CreditEntryResource {
            id: e.id.to_string(),
            kind: e.kind,
            amount: e.amount,
            reason: e.reason,
            job_id: e.job_id,
            order_id: e.order_id,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsPage {
    /// What may be spent now.
    pub balance: u64,
    /// Held by unfinished jobs: charged when they succeed, returned when
    /// they do not.
    pub reserved: u64,
    /// Newest first.
    pub entries: Vec<CreditEntryResource>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/credits", tag = "credits",
    security(("bearer" = [])),
    params(CreditsQuery),
    responses(
        (status = 200, description = "the balance, what unfinished jobs hold, and the ledger, newest first", body = CreditsPage),
        (status = 400, description = "bad query", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 422, description = "bad limit or cursor", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<CreditsQuery>,
) -> Result<Json<CreditsPage>, Problem> {
    let (limit, before) = super::numeric_page(query.limit, query.cursor.as_deref())?;
    // The sums first: an entry written between the two reads then shows
    // in the list without being missing from a later balance.
    let sums = state.store.credit_balance(user.id).await?;
    let mut entries = state
        .store
        .credit_entries(user.id, before, limit + 1)
        .await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = more
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(CreditsPage {
        balance: sums.balance,
        reserved: sums.reserved,
        entries: entries.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
