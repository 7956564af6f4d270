//! Policy versions and security notices: operators publish them, a
//! `notify_users` fan-out tells every account concerned in its own
//! language, and each owner sees a pending policy change (`GET /v1/me`)
//! until they acknowledge it.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, TimeDelta, Utc};
use kiln_jobs::{LocalizedText, UserId};
use kiln_store::{
    access_log::AccessEvent,
    notices::{POLICY_NOTICE_DAYS, PolicyState, PolicyVersion, SecurityNotice},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Json, Path, Problem,
    auth::{ClientOrigin, CurrentUser, Operator},
    problem::parse_id,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/policy", get(policy))
        .route("/v1/me/policy-ack", post(acknowledge))
        .route("/admin/v1/policy-versions", post(publish))
        .route("/admin/v1/notices/security", post(security_notice))
        .route("/admin/v1/notices/security/{id}", get(show_security_notice))
}

/// Text in English and Chinese: `en` always; `zh-Hans` (simplified) and
/// `zh-Hant` (traditional) as given. A reader whose script is missing gets
/// the other script.
#[derive(Debug, Serialize, ToSchema)]
pub struct Localized {
    pub en: String,
    #[serde(rename = "zh-Hans")]
    pub zh_hans: Option<String>,
    #[serde(rename = "zh-Hant")]
    pub zh_hant: Option<String>,
}

/// The longest policy summary or notice body, per language.
const MAX_TEXT_CHARS: usize = 10_000;
/// The longest notice subject.
const MAX_SUBJECT_CHARS: usize = 200;

/// Every version given is non-blank and at most `max` characters.
fn check_text(field: &str, text: &LocalizedText, max: usize) -> Result<(), Problem> {
    for version in text.versions() {
        if version.trim().is_empty() {
            return Err(Problem::invalid(format!("{field} must not be blank")));
        }
        if version.chars().count() > max {
            return Err(Problem::invalid(format!(
                "{field} is longer than {max} characters"
            )));
        }
    }
    Ok(())
}

/// A version of the policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersionResource {
    pub version: String,
    pub effective_at: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
    /// What changes, in English and Chinese.
    #[schema(value_type = Localized)]
    pub summary: LocalizedText,
}

impl From<PolicyVersion> for PolicyVersionResource {
    fn from(v: PolicyVersion) -> Self {
        PolicyVersionResource {
            version: v.version,
            effective_at: v.effective_at,
            published_at: v.published_at,
            summary: v.summary,
        }
    }
}

/// The policy in force and the next version announced.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyResource {
    /// The version in effect now; null before the first takes effect.
    pub current: Option<PolicyVersionResource>,
    /// The next version, announced and not yet in effect.
    pub pending: Option<PolicyVersionResource>,
}

#[utoipa::path(get, path = "/v1/policy", tag = "accounts",
    responses(
        (status = 200, description = "the policy version in effect and the next one announced, each with its summary in English and Chinese", body = PolicyResource),
    ))]
async fn policy(State(state): State<AppState>) -> Result<Json<PolicyResource>, Problem> {
    let versions = state.store.policy_versions().await?;
    let PolicyState { current, pending } = PolicyState::at(versions, Utc::now());
    Ok(Json(PolicyResource {
        current: current.map(Into::into),
        pending: pending.map(Into::into),
    }))
}

/// Which policy version you read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyAck {
    pub version: String,
}

#[utoipa::path(post, path = "/v1/me/policy-ack", tag = "accounts",
    security(("bearer" = [])),
    request_body = PolicyAck,
    responses(
        (status = 204, description = "acknowledged: `GET /v1/me` shows no pending policy up to this version"),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 404, description = "no policy version of that name", body = Problem),
        (status = 422, description = "the body is not a JSON object with a `version`", body = Problem),
    ))]
async fn acknowledge(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
    Json(req): Json<PolicyAck>,
) -> Result<StatusCode, Problem> {
    if !state
        .store
        .acknowledge_policy(user.id, &req.version)
        .await?
    {
        return Err(Problem::not_found("policy version"));
    }
    state
        .store
        .record_access(Some(user.id), AccessEvent::PolicyAcknowledged, &origin)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A policy version to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicyVersion {
    /// 1 to 64 letters, digits, `.`, `_` or `-` (e.g. `2027-01`).
    pub version: String,
    /// At least 7 days from now.
    pub effective_at: DateTime<Utc>,
    /// `en` and at least one of `zh-Hans` and `zh-Hant`.
    #[schema(value_type = Localized)]
    pub summary: LocalizedText,
}

/// A published version and the fan-out that announces it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedPolicy {
    #[serde(flatten)]
    pub policy: PolicyVersionResource,
    /// The `notify_users` job that emails (or texts) every active account.
    pub job_id: Uuid,
}

#[utoipa::path(post, path = "/admin/v1/policy-versions", tag = "operators",
    security(("bearer" = [])),
    request_body = NewPolicyVersion,
    responses(
        (status = 201, description = "published; a `notify_users` job tells every verified, unrestricted account in its language, and `GET /v1/me` shows it pending until acknowledged", body = PublishedPolicy),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 409, description = "`conflict`: a version of that name exists", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "`invalid_input`: takes effect less than 7 days from now, no Chinese summary, or a bad version name", body = Problem),
    ))]
async fn publish(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Operator(operator): Operator,
    Json(req): Json<NewPolicyVersion>,
) -> Result<(StatusCode, Json<PublishedPolicy>), Problem> {
    let name_ok = (1..=64).contains(&req.version.len())
        && req
            .version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(Problem::invalid(
            "version must be 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    let now = Utc::now();
    let earliest = now + TimeDelta::days(POLICY_NOTICE_DAYS);
    if req.effective_at < earliest {
        return Err(Problem::invalid(format!(
            "effective_at must be at least {POLICY_NOTICE_DAYS} days ahead, so users are told \
             before it takes effect: {} or later",
            earliest.format("%Y-%m-%dT%H:%M:%SZ")
        )));
    }
    check_text("summary", &req.summary, MAX_TEXT_CHARS)?;
    if !req.summary.has_chinese() {
        return Err(Problem::invalid(
            "summary needs a Chinese version (zh-Hans or zh-Hant) beside the English one",
        ));
    }
    let version = PolicyVersion {
        version: req.version,
        effective_at: req.effective_at,
        summary: req.summary,
        published_at: now,
    };
    let Some(job_id) = state.store.publish_policy(&version).await? else {
        return Err(Problem::conflict("a policy version of that name exists"));
    };
    state
        .store
        .record_audit(
            operator,
            AccessEvent::PolicyPublished,
            &origin,
            &serde_json::json!({"version": version.version, "job_id": job_id}),
        )
        .await?;
    tracing::info!(%operator, version = %version.version, %job_id, "policy version published");
    Ok((
        StatusCode::CREATED,
        Json(PublishedPolicy {
            policy: version.into(),
            job_id,
        }),
    ))
}

/// A security notice to send: to the accounts named, or to all.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecurityNotice {
    /// Up to 200 characters in each language.
    #[schema(value_type = Localized)]
    pub subject: LocalizedText,
    /// Up to 10,000 characters in each language.
    #[schema(value_type = Localized)]
    pub body: LocalizedText,
    /// The affected accounts (1 to 1,000); or `all`.
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub user_ids: Option<Vec<UserId>>,
    /// `true`: every verified account.
    pub all: Option<bool>,
}

/// A security notice as sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityNoticeResource {
    pub id: Uuid,
    #[schema(value_type = Localized)]
    pub subject: LocalizedText,
    #[schema(value_type = Localized)]
    pub body: LocalizedText,
    /// Sent to every verified account (else to the accounts named).
    pub all: bool,
    /// When it was recorded and its fan-out queued: the 72 hours of the
    /// breach promise are counted to here.
    pub created_at: DateTime<Utc>,
    /// The `notify_users` job that sends it.
    pub job_id: Option<Uuid>,
    /// The fan-out's state (`queued`, `running`, `succeeded`, ...).
    pub job_state: Option<String>,
    /// Accounts it was queued for so far.
    pub recipients: u64,
}

async fn resource(state: &AppState, n: SecurityNotice) -> Result<SecurityNoticeResource, Problem> {
    let broadcast = kiln_jobs::Broadcast::Security { notice_id: n.id };
    let recipients = state.store.recipients(&broadcast).await?;
    let job_state = match n.job_id {
        Some(id) => state
            .store
            .get(id)
            .await?
            .map(|j| j.state.as_str().to_owned()),
        None => None,
    };
    Ok(SecurityNoticeResource {
        id: n.id,
        subject: n.subject,
        body: n.body,
        all: n.everyone,
        created_at: n.created_at,
        job_id: n.job_id,
        job_state,
        recipients,
    })
}

/// Accounts one notice may name.
const MAX_NAMED: usize = 1000;

#[utoipa::path(post, path = "/admin/v1/notices/security", tag = "operators",
    security(("bearer" = [])),
    request_body = NewSecurityNotice,
    responses(
        (status = 202, description = "recorded; a `notify_users` job sends it to each account in its language (restricted accounts too)", body = SecurityNoticeResource),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "`invalid_input`: not exactly one of `user_ids` and `all: true`, or a blank or too long text", body = Problem),
    ))]
async fn security_notice(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Operator(operator): Operator,
    Json(req): Json<NewSecurityNotice>,
) -> Result<(StatusCode, Json<SecurityNoticeResource>), Problem> {
    check_text("subject", &req.subject, MAX_SUBJECT_CHARS)?;
    check_text("body", &req.body, MAX_TEXT_CHARS)?;
    let audience = match (req.user_ids, req.all) {
        (Some(ids), None | Some(false)) if (1..=MAX_NAMED).contains(&ids.len()) => ids,
        (None, Some(true)) => Vec::new(),
        _ => {
            return Err(Problem::invalid(format!(
                "give either user_ids (1 to {MAX_NAMED} accounts) or \"all\": true"
            )));
        }
    };
    let mut notice = SecurityNotice {
        id: Uuid::now_v7(),
        subject: req.subject,
        body: req.body,
        everyone: audience.is_empty(),
        created_at: Utc::now(),
        job_id: None,
    };
    let job_id = state
        .store
        .record_security_notice(&notice, &audience)
        .await?;
    notice.job_id = Some(job_id);
    state
        .store
        .record_audit(
            operator,
            AccessEvent::SecurityNoticeSent,
            &origin,
            &serde_json::json!({
                "notice_id": notice.id,
                "job_id": job_id,
                "accounts": if audience.is_empty() { serde_json::json!("all") } else { serde_json::json!(audience.len()) },
            }),
        )
        .await?;
    tracing::info!(%operator, notice = %notice.id, %job_id, accounts = audience.len(), "security notice queued");
    Ok((StatusCode::ACCEPTED, Json(resource(&state, notice).await?)))
}

#[utoipa::path(get, path = "/admin/v1/notices/security/{id}", tag = "operators",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the notice's id")),
    responses(
        (status = 200, description = "the notice, when it was recorded, its fan-out's state and how many accounts it reached", body = SecurityNoticeResource),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`forbidden`: not an operator", body = Problem),
        (status = 404, description = "no such notice", body = Problem),
    ))]
async fn show_security_notice(
    State(state): State<AppState>,
    Operator(operator): Operator,
    Path(id): Path<String>,
) -> Result<Json<SecurityNoticeResource>, Problem> {
    let id = parse_id(&id, "security notice")?;
    tracing::info!(%operator, notice = %id, "operator read a security notice");
    let notice = state
        .store
        .security_notice(id)
        .await?
        .ok_or_else(|| Problem::not_found("security notice"))?;
    Ok(Json(resource(&state, notice).await?))
}
