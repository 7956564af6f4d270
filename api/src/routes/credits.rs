use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use kiln_jobs::OrderId;
use kiln_providers::{ProviderError, payments::CheckoutRequest};
use kiln_store::{
    credits::{CreditEntry, EntryKind},
    orders::NewOrder,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{AppState, Json, Problem, Query, auth::CurrentUser};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/credits", get(show))
        .route("/v1/credits/packs", get(packs))
        .route("/v1/credits/checkout", post(checkout))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreditsQuery {
    /// Entries per page: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (an entry id).
    #[param(value_type = Option<String>, pattern = "^[1-9][0-9]{0,17}$")]
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

/// A pack of credits on sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct PackResource {
    /// What `POST /v1/credits/checkout` takes as `pack`.
    pub name: String,
    pub credits: u32,
    /// The price in the currency's minor unit (500 = 5.00).
    pub amount: u64,
    pub currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PacksPage {
    pub packs: Vec<PackResource>,
}

#[utoipa::path(get, path = "/v1/credits/packs", tag = "credits",
    responses(
        (status = 200, description = "the packs of credits on sale", body = PacksPage),
    ))]
async fn packs(State(state): State<AppState>) -> Json<PacksPage> {
    Json(PacksPage {
        packs: state
            .shop
            .packs
            .iter()
            .map(|(name, p)| PackResource {
                name: name.clone(),
                credits: p.credits,
                amount: p.amount,
                currency: p.currency.clone(),
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// A pack's `name` from `GET /v1/credits/packs`.
    pub pack: String,
}

/// An order waiting for payment. Its credits are added once the merchant
/// of record tells kiln it was paid.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutResource {
    #[schema(value_type = uuid::Uuid)]
    pub order_id: OrderId,
    pub pack: String,
    pub credits: u32,
    /// Open it in a browser to pay.
    pub checkout_url: String,
}

#[utoipa::path(post, path = "/v1/credits/checkout", tag = "credits",
    security(("bearer" = [])),
    request_body = CheckoutBody,
    responses(
        (status = 201, description = "an order, and where to pay for it", body = CheckoutResource),
        (status = 400, description = "malformed body", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "no such pack", body = Problem),
        (status = 502, description = "the merchant of record refused the checkout", body = Problem),
        (status = 503, description = "the merchant of record is not answering", body = Problem),
    ))]
async fn checkout(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(body): Json<CheckoutBody>,
) -> Result<(StatusCode, Json<CheckoutResource>), Problem> {
    let shop = &state.shop;
    let Some(pack) = shop.packs.get(&body.pack) else {
        let names: Vec<&str> = shop.packs.keys().map(String::as_str).collect();
        return Err(Problem::invalid(format!(
            "pack must be one of: {}",
            names.join(", ")
        )));
    };
    let order = OrderId(uuid::Uuid::new_v4());
    state
        .store
        .open_order(&NewOrder {
            id: order,
            user: user.id,
            provider: shop.merchant.name().to_owned(),
            pack: body.pack.clone(),
            credits: pack.credits,
        })
        .await?;
    let email = if shop.share_email {
        state.store.contacts(user.id).await?.and_then(|c| c.email)
    } else {
        None
    };
    let opened = shop
        .merchant
        .checkout(&CheckoutRequest {
            order,
            account: user.id,
            pack,
            customer_email: email.as_deref(),
        })
        .await
        .map_err(merchant_problem)?;
    if let Some(transaction) = &opened.transaction_id {
        state
            .store
            .set_order_transaction(order, transaction)
            .await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(CheckoutResource {
            order_id: order,
            pack: body.pack,
            credits: pack.credits,
            checkout_url: opened.url,
        }),
    ))
}

/// The merchant's error is logged (its messages carry no contact details)
/// and the buyer is told only whether trying again may help.
fn merchant_problem(e: ProviderError) -> Problem {
    tracing::warn!(error = %e, "the merchant of record refused a checkout");
    match e {
        ProviderError::Transient { retry_after, .. } => Problem {
            retry_after: Some(retry_after.map_or(5, |d| d.as_secs().max(1))),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "payments_unavailable",
                "the payment provider is not answering; try again shortly",
            )
        },
        ProviderError::Permanent { .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "payments_refused",
            "the payment provider refused to open a checkout; the operators have been told",
        ),
    }
}
