//! `webhook_url` and `webhook_events` of an enqueueing request: checked
//! once, here, for every route that takes them.

use axum::http::StatusCode;
use kiln_jobs::{UserId, WebhookEvents};
use kiln_store::WebhookTarget;

use crate::{AppState, Problem};

/// The longest webhook URL accepted.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;

/// The registration a request asks for, or none. Refuses (422) a URL that
/// is not https (`invalid_input`), one whose host resolves to a private,
/// local or reserved address (`address_not_allowed`), events without a
/// URL, and an account with no signing secret yet
/// (`webhook_secret_missing`: deliveries are always signed).
pub async fn target(
    state: &AppState,
    owner: UserId,
    url: Option<&str>,
    events: Option<WebhookEvents>,
) -> Result<Option<WebhookTarget>, Problem> {
    let Some(url) = url else {
        if events.is_some() {
            return Err(Problem::invalid("webhook_events needs a webhook_url"));
        }
        return Ok(None);
    };
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return Err(Problem::invalid(format!(
            "webhook_url is longer than {MAX_WEBHOOK_URL_LEN} characters"
        )));
    }
    state
        .webhook_guard
        .check_address(url)
        .await
        .map_err(|e| match e.code() {
            "address_not_allowed" => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "address_not_allowed",
                e.message().to_owned(),
            ),
            _ => Problem::invalid(e.message().to_owned()),
        })?;
    if state.store.webhook_secret(owner).await?.is_none() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook_secret_missing",
            "deliveries are signed: create your signing secret first with POST /v1/me/webhook-secret",
        ));
    }
    Ok(Some(WebhookTarget {
        url: url.trim().to_owned(),
        events: events.unwrap_or_default(),
    }))
}
