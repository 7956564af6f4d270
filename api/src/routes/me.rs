use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, NaiveDate, Utc};
use kiln_jobs::{Locale, UserId};
use kiln_store::{
    access_log::{AccessEntry, AccessEvent},
    accounts::{CodeCheck, Contacts, Identifier, Profile},
    subject_requests::{NewRequest, RequestKind},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{
    LoginThrottle, VerificationSent, invalid_code, send_code, throttle_sends, typed_code,
};
use crate::{
    AppState, Json, Problem, Query,
    auth::{ClientOrigin, CurrentUser},
    identifier::identifier,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(show).patch(correct).delete(delete_account))
        .route("/v1/me/restriction", post(restrict).delete(unrestrict))
        .route("/v1/me/deletion-code", post(deletion_code))
        .route("/v1/me/webhook-secret", post(webhook_secret))
        .route("/v1/me/access-log", get(access_log))
}

/// Your account, as kiln keeps it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeResource {
    #[schema(value_type = uuid::Uuid)]
    pub id: UserId,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub birth_date: NaiveDate,
    /// Your code to share: whoever signs up with it, and you, get a bonus.
    pub referral_code: String,
    pub verified_at: Option<DateTime<Utc>>,
    /// Whether you restricted the account (it starts no new jobs and gets
    /// only the notices the law requires).
    pub restricted: bool,
    pub restricted_at: Option<DateTime<Utc>>,
    pub operator: bool,
    pub created_at: DateTime<Utc>,
    /// The language notices go out in: `en`, `zh-Hans` or `zh-Hant`.
    #[schema(value_type = String, example = "en")]
    pub locale: Locale,
    /// A policy change published since you signed up that you have not
    /// acknowledged (`POST /v1/me/policy-ack`); null when there is none.
    pub pending_policy: Option<super::notices::PolicyVersionResource>,
}

impl From<Profile> for MeResource {
    fn from(p: Profile) -> Self {
        MeResource {
            locale: p.locale,
            pending_policy: None,
            id: p.id,
            email: p.email,
            phone: p.phone,
            birth_date: p.birth_date,
            referral_code: p.referral_code,
            verified_at: p.verified_at,
            restricted: p.restricted_at.is_some(),
            restricted_at: p.restricted_at,
            operator: p.operator,
            created_at: p.created_at,
        }
    }
}

async fn profile(state: &AppState, user: UserId) -> Result<MeResource, Problem> {
    let mut me = state
        .store
        .profile(user)
        .await?
        .map(MeResource::from)
        // A token outlives its account only by a race with deletion.
        .ok_or_else(Problem::unauthorized)?;
    me.pending_policy = state.store.pending_policy(user).await?.map(Into::into);
    Ok(me)
}

#[utoipa::path(get, path = "/v1/me", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "your account", body = MeResource),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn show(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<MeResource>, Problem> {
    let me = profile(&state, user.id).await?;
    // Seeing one's data answers an access request there and then.
    register(&state, user.id, RequestKind::Access, None, true).await?;
    Ok(Json(me))
}

/// Records a data-subject request in the register operators watch (due in
/// 30 days; `answered` when this answer is the whole of it).
async fn register(
    state: &AppState,
    user: UserId,
    kind: RequestKind,
    job_id: Option<uuid::Uuid>,
    answered: bool,
) -> Result<(), Problem> {
    state
        .store
        .record_request(NewRequest {
            user,
            kind,
            job_id,
            answered,
        })
        .await?;
    Ok(())
}

/// A correction: a new `email` or `phone` (one of them), or the `locale`
/// notices go out in, or both. Without `code`, a code is sent to the new
/// address; with the code it received, the new address replaces the old.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    pub email: Option<String>,
    pub phone: Option<String>,
    /// The 6 digits sent to the new address.
    pub code: Option<String>,
    /// `en`, `zh-Hans` or `zh-Hant`: set at once.
    #[schema(value_type = Option<String>, example = "zh-Hant")]
    pub locale: Option<Locale>,
}

#[utoipa::path(patch, path = "/v1/me", tag = "accounts",
    security(("bearer" = [])),
    request_body = CorrectionRequest,
    responses(
        (status = 200, description = "the locale was set, or the code was right and the new address replaced the old", body = MeResource),
        (status = 202, description = "a code is on its way to the new address (an address that has another account gets no code, and the same answer)", body = VerificationSent),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 401, description = "no valid token", body = Problem),
        (status = 409, description = "the address went to another account before the code was used", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "`invalid_code`, or `invalid_input`: nothing to change, both email and phone, not an address, already yours, or an unknown locale", body = Problem),
        (status = 429, description = "`rate_limited`: a code went to this address a short while ago", body = Problem),
    ))]
async fn correct(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
    Json(req): Json<CorrectionRequest>,
) -> Result<Response, Problem> {
    if let Some(locale) = req.locale {
        if !state.store.set_locale(user.id, locale).await? {
            return Err(Problem::unauthorized());
        }
        if req.email.is_none() && req.phone.is_none() {
            if req.code.is_some() {
                return Err(Problem::invalid(
                    "a code goes with the email or phone it confirms",
                ));
            }
            return Ok(Json(profile(&state, user.id).await?).into_response());
        }
    }
    let new = identifier(req.email, req.phone)?;
    let Some(code) = req.code else {
        let current = contacts(&state, user.id).await?;
        let already = match &new {
            Identifier::Email(e) => current.email.as_ref() == Some(e),
            Identifier::Phone(p) => current.phone.as_ref() == Some(p),
        };
        if already {
            return Err(Problem::invalid("that is already your address"));
        }
        throttle_sends(&state, &new).await?;
        // An address with an account gets no code and the same answer, so
        // the request tells nobody whose it is.
        if state.store.login_record(&new).await?.is_none() {
            send_code(&state, &new, user.id, true).await?;
        }
        state
            .store
            .record_access(Some(user.id), AccessEvent::ContactChangeRequested, &origin)
            .await?;
        // Answered by the code sent now; the change itself waits for the
        // owner to prove the new address.
        register(&state, user.id, RequestKind::Correction, None, true).await?;
        return Ok((StatusCode::ACCEPTED, Json(VerificationSent::new())).into_response());
    };
    let code = typed_code(&code)?;
    // The code must be the one sent to this address.
    let pending = state
        .store
        .codes(user.id)
        .await?
        .into_iter()
        .any(|c| c.is_live(Utc::now()) && c.contact.as_ref() == Some(&new));
    if !pending {
        return Err(invalid_code());
    }
    let hash = state.codes.code_hash(user.id, &code);
    let grants = state.credits.verification_grants();
    match state.store.check_code(user.id, &hash, grants).await? {
        CodeCheck::Verified => {
            state
                .store
                .record_access(Some(user.id), AccessEvent::ContactChanged, &origin)
                .await?;
            Ok(Json(profile(&state, user.id).await?).into_response())
        }
        CodeCheck::AddressTaken => Err(Problem::conflict(
            "that address now belongs to another account; nothing was changed",
        )),
        CodeCheck::Wrong { .. } => {
            state
                .store
                .record_access(Some(user.id), AccessEvent::VerifyFailed, &origin)
                .await?;
            Err(invalid_code())
        }
        CodeCheck::NoLiveCode => Err(invalid_code()),
    }
}

#[utoipa::path(post, path = "/v1/me/restriction", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "the account is restricted: its waiting jobs are cancelled and refunded, running ones told to stop; it starts no new jobs (403 `restricted`) and gets only the notices the law requires"),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn restrict(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
) -> Result<StatusCode, Problem> {
    if state.store.set_restricted(user.id, true).await? {
        state
            .store
            .record_access(Some(user.id), AccessEvent::Restricted, &origin)
            .await?;
    }
    // Restriction stops processing: what waits is cancelled (and
    // refunded), what runs is told to stop; a copy of the data the owner
    // asked for is their right of access, and goes on.
    state
        .store
        .cancel_jobs_of(user.id, &[<kiln_jobs::DataExport as kiln_jobs::Job>::KIND])
        .await?;
    register(&state, user.id, RequestKind::Restriction, None, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/me/restriction", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "the restriction is lifted"),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn unrestrict(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
) -> Result<StatusCode, Problem> {
    if state.store.set_restricted(user.id, false).await? {
        state
            .store
            .record_access(Some(user.id), AccessEvent::Unrestricted, &origin)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Deleting your account: your password, or the code
/// `POST /v1/me/deletion-code` sent you, to show it is you (one of them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletionRequest {
    pub password: Option<String>,
    /// The 6 digits sent to your address (valid `api.code_ttl_secs`).
    pub code: Option<String>,
}

#[utoipa::path(post, path = "/v1/me/deletion-code", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "a code is on its way to your email or phone; `DELETE /v1/me` `{\"code\"}` with it deletes the account", body = VerificationSent),
        (status = 401, description = "no valid token", body = Problem),
        (status = 429, description = "`rate_limited`: a code went to this address a short while ago", body = Problem),
    ))]
async fn deletion_code(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<(StatusCode, Json<VerificationSent>), Problem> {
    let address = address_of(&state, user.id).await?;
    throttle_sends(&state, &address).await?;
    send_code(&state, &address, user.id, false).await?;
    Ok((StatusCode::ACCEPTED, Json(VerificationSent::new())))
}

/// The account's addresses, opened; 401 once it is gone (a token outlives
/// its account only by a race with deletion).
async fn contacts(state: &AppState, user: UserId) -> Result<Contacts, Problem> {
    state
        .store
        .contacts(user)
        .await?
        .ok_or_else(Problem::unauthorized)
}

/// The address the account signs in with (email first).
async fn address_of(state: &AppState, user: UserId) -> Result<Identifier, Problem> {
    match contacts(state, user).await? {
        Contacts {
            email: Some(email), ..
        } => Ok(Identifier::Email(email)),
        Contacts {
            phone: Some(phone), ..
        } => Ok(Identifier::Phone(phone)),
        _ => Err(Problem::unauthorized()),
    }
}

/// What a deletion request did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletionAccepted {
    /// `deletion_requested`.
    pub status: &'static str,
    /// By when your prompts, images and personal data are erased at the
    /// latest (the purge starts at once).
    pub erased_by: DateTime<Utc>,
}

#[utoipa::path(delete, path = "/v1/me", tag = "accounts",
    security(("bearer" = [])),
    request_body = DeletionRequest,
    responses(
        (status = 202, description = "the account is deleted: every token stops working now, the address can register again, and the account's prompts, images, jobs and personal data are erased by `erased_by` (payment records and access-log entries are kept, detached, for the periods the law requires)", body = DeletionAccepted),
        (status = 401, description = "no valid token", body = Problem),
        (status = 403, description = "`wrong_password`", body = Problem),
        (status = 422, description = "`invalid_input`: not exactly one of password and code; `invalid_code`: the code is wrong, expired or used up", body = Problem),
        (status = 429, description = "`rate_limited`: too many wrong passwords for this account or IP (counted with the login's)", body = Problem),
    ))]
async fn delete_account(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
    Json(req): Json<DeletionRequest>,
) -> Result<(StatusCode, Json<DeletionAccepted>), Problem> {
    match (req.password, req.code) {
        (Some(password), None) => check_password(&state, &origin, user.id, password).await?,
        (None, Some(code)) => check_deletion_code(&state, &origin, user.id, &code).await?,
        _ => {
            return Err(Problem::invalid(
                "give your password, or the code POST /v1/me/deletion-code sent you (one of them)",
            ));
        }
    }
    // Recorded first: the entry outlives the account, detached from it.
    state
        .store
        .record_access(Some(user.id), AccessEvent::DeletionRequested, &origin)
        .await?;
    // The store registers the request with it, answered by the erasure.
    if state.store.delete_account(user.id).await?.is_none() {
        return Err(Problem::unauthorized());
    }
    let erased_by =
        Utc::now() + chrono::Duration::days(i64::from(state.retention.deleted_account_days));
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletionAccepted {
            status: "deletion_requested",
            erased_by,
        }),
    ))
}

/// A code the account was sent, checked (and used up) as a verification
/// code is: wrong guesses spend its tries.
async fn check_deletion_code(
    state: &AppState,
    origin: &kiln_store::access_log::Origin,
    user: UserId,
    code: &str,
) -> Result<(), Problem> {
    let code = typed_code(code)?;
    let hash = state.codes.code_hash(user, &code);
    let grants = state.credits.verification_grants();
    match state.store.check_code(user, &hash, grants).await? {
        CodeCheck::Verified => Ok(()),
        CodeCheck::Wrong { .. } => {
            state
                .store
                .record_access(Some(user), AccessEvent::VerifyFailed, origin)
                .await?;
            Err(invalid_code())
        }
        CodeCheck::NoLiveCode | CodeCheck::AddressTaken => Err(invalid_code()),
    }
}

/// The account's password, checked; wrong ones count with the login's, so
/// a stolen token cannot guess its way to deleting the account faster
/// than to signing in.
async fn check_password(
    state: &AppState,
    origin: &kiln_store::access_log::Origin,
    user: UserId,
    password: String,
) -> Result<(), Problem> {
    // A token outlives its account only by a race with deletion.
    let hash = state
        .store
        .password_hash(user)
        .await?
        .ok_or_else(Problem::unauthorized)?;
    let address = address_of(state, user).await?;
    let throttled = LoginThrottle::new(state, &address, origin);
    throttled.refuse_when_full().await?;
    if !crate::auth::verify_password(password, hash)
        .await
        .unwrap_or(false)
    {
        state
            .store
            .record_access(Some(user), AccessEvent::LoginFailed, origin)
            .await?;
        throttled.count_failure().await?;
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "wrong_password",
            "the password is not this account's; deleting an account needs its password",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccessLogQuery {
    /// Entries per page: 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

/// One thing that happened to your account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessEntryResource {
    pub id: String,
    /// `register`, `registration_attempt` (someone tried to sign up with
    /// your address), `verify`, `verify_failed`, `login`, `login_failed`,
    /// `logout`, `new_ip` (your account was used from an IP for the first
    /// time), `contact_change_requested`, `contact_changed`, `restricted`,
    /// `unrestricted`, `operator_granted`, `operator_revoked`,
    /// `deletion_requested`, `policy_acknowledged`, and for operators
    /// `policy_published` and `security_notice_sent`.
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

/// The account's new webhook signing secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// `whsec_` then 32 random bytes in base64 (Standard Webhooks): verify
    /// each delivery's `webhook-signature` with it.
    pub secret: String,
}

#[utoipa::path(post, path = "/v1/me/webhook-secret", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "a new signing secret for your webhook deliveries, shown this once; any earlier one stops signing at once", body = WebhookSecret),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn webhook_secret(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
) -> Result<(StatusCode, Json<WebhookSecret>), Problem> {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    if !state.store.set_webhook_secret(user.id, &secret).await? {
        return Err(Problem::unauthorized());
    }
    state
        .store
        .record_access(Some(user.id), AccessEvent::WebhookSecretRotated, &origin)
        .await?;
    Ok((StatusCode::CREATED, Json(WebhookSecret { secret })))
}
