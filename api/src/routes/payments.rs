//! What the merchant of record talks to: its signed notifications
//! (`POST /v1/webhooks/payments`), and, when the merchant is the dev
//! provider, the checkout pages a buyer opens (`/v1/dev/checkout/{order}`).

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use kiln_jobs::{OrderId, escape_html};
use kiln_providers::payments::{DevPayments, Pack, PaymentEvent};
use kiln_store::orders::{OrderStatus, Payment, PaymentNotification, PaymentOutcome};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, Json, Path, Problem};

pub fn routes(dev: bool) -> Router<AppState> {
    let router = Router::new().route("/v1/webhooks/payments", post(notification));
    if dev {
        router.route(
            "/v1/dev/checkout/{order}",
            get(dev_checkout_page).post(dev_pay),
        )
    } else {
        router
    }
}

/// What kiln did with a notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationAck {
    /// `granted` (the order is paid and its credits added), `duplicate`
    /// (this event was applied before), `already_paid`, `ignored` (not a
    /// payment kiln acts on) or `unknown_order`.
    pub outcome: &'static str,
}

#[utoipa::path(post, path = "/v1/webhooks/payments", tag = "credits",
    request_body(content = String, description = "the merchant's notification, signed over its raw bytes (Paddle-Signature, or Standard Webhooks headers)", content_type = "application/json"),
    responses(
        (status = 200, description = "verified and applied (once per event id)", body = NotificationAck),
        (status = 400, description = "unsigned, wrongly signed, stale or unreadable: nothing applied", body = Problem),
    ))]
async fn notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<NotificationAck>, Problem> {
    let merchant = &state.shop.merchant;
    let provider = merchant.name();
    let counted = |outcome: &str| {
        kiln_store::metrics::metrics()
            .payment_notifications
            .with_label_values(&[provider, outcome])
            .inc();
    };
    let event = merchant
        .verify(&headers, &body, Utc::now())
        .map_err(|refusal| {
            counted(refusal.code());
            tracing::warn!(provider, reason = %refusal, "payment notification refused");
            Problem::new(StatusCode::BAD_REQUEST, refusal.code(), refusal.to_string())
        })?;
    let notification = notification_of(provider, event);
    let outcome = state.store.apply_payment(&notification).await?;
    counted(outcome.as_str());
    let event_id = notification.event_id.as_str();
    match outcome {
        PaymentOutcome::Granted { credits, .. } => {
            tracing::info!(provider, event_id, credits, "credits purchased");
        }
        PaymentOutcome::UnknownOrder => {
            // Paid, but not to an order of that account: someone must look.
            tracing::error!(
                provider,
                event_id,
                "a payment names no open order of its account"
            );
        }
        _ => tracing::debug!(
            provider,
            event_id,
            outcome = outcome.as_str(),
            "payment notification"
        ),
    }
    Ok(Json(NotificationAck {
        outcome: outcome.as_str(),
    }))
}

fn notification_of(provider: &str, event: PaymentEvent) -> PaymentNotification {
    PaymentNotification {
        provider: provider.to_owned(),
        event_id: event.event_id,
        event_type: event.event_type,
        payment: event.paid.map(|p| Payment {
            order: p.order,
            account: p.account,
            transaction_id: p.transaction_id,
            amount: p.amount,
            currency: p.currency,
            paid_at: p.paid_at,
        }),
    }
}

/// A page with no script, no outside resources, and forms that post only
/// back here.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body>\n<h1>{title}</h1>\n{body}\n<p><small>kiln dev checkout: no money is taken.</small></p>\n</body>\n</html>\n",
        title = escape_html(title)
    );
    let mut response = (status, Html(html)).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

fn price(pack: Option<&Pack>) -> String {
    pack.map_or_else(String::new, |p| {
        format!("{}.{:02} {}", p.amount / 100, p.amount % 100, p.currency)
    })
}

/// The order, its pack as configured, and the dev merchant; a 404 page
/// for an order that does not exist.
async fn dev_order(
    state: &AppState,
    raw: &str,
) -> Result<
    (
        kiln_store::orders::Order,
        Option<Pack>,
        std::sync::Arc<DevPayments>,
    ),
    Response,
> {
    let not_found = || {
        page(
            StatusCode::NOT_FOUND,
            "No such order",
            "<p>Start a new checkout.</p>",
        )
    };
    let dev = state.shop.dev.clone().ok_or_else(not_found)?;
    let id: OrderId = raw.parse().map_err(|_| not_found())?;
    let order = match state.store.order(id).await {
        Ok(Some(order)) if order.provider == "dev" => order,
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(Problem::from(e).into_response()),
    };
    let pack = state.shop.packs.get(&order.pack).cloned();
    Ok((order, pack, dev))
}

async fn dev_checkout_page(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
    let (order, pack, _) = match dev_order(&state, &raw).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if order.status == OrderStatus::Paid {
        return page(StatusCode::OK, "Paid", "<p>This order is paid.</p>");
    }
    let body = format!(
        "<p>{} credits ({}) for your kiln account.</p>\n\
         <form method=\"post\"><button type=\"submit\">Pay</button></form>",
        order.credits,
        escape_html(&price(pack.as_ref()))
    );
    page(StatusCode::OK, "Buy credits", &body)
}

/// Pays the order the way a merchant would: a signed notification to
/// kiln's own receiver, over HTTP.
async fn dev_pay(State(state): State<AppState>, Path(raw): Path<String>) -> Response {
    let (order, pack, dev) = match dev_order(&state, &raw).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (Some(account), OrderStatus::Open) = (order.user, order.status) else {
        return page(StatusCode::OK, "Paid", "<p>This order is paid.</p>");
    };
    let pack = pack.unwrap_or(Pack {
        credits: order.credits,
        amount: 0,
        currency: "USD".into(),
        price_id: None,
    });
    match dev.pay(order.id, account, &pack).await {
        Ok(status) if status.is_success() => page(
            StatusCode::OK,
            "Paid",
            &format!(
                "<p>{} credits were added to your account.</p>",
                order.credits
            ),
        ),
        Ok(status) => {
            tracing::error!(
                status = status.as_u16(),
                "the dev checkout's notification was refused"
            );
            page(
                StatusCode::BAD_GATEWAY,
                "Payment not applied",
                "<p>kiln refused the payment notification; see its log.</p>",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "the dev checkout could not reach kiln");
            page(
                StatusCode::BAD_GATEWAY,
                "Payment not applied",
                "<p>The dev checkout could not reach kiln's webhook receiver.</p>",
            )
        }
    }
}
