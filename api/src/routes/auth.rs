use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use chrono::{Datelike, NaiveDate, Utc};
use kiln_jobs::{Notice, SendEmail, SendSms, UserId};
use kiln_store::{
    CODE_DIGITS, NewJob,
    access_log::{AccessEvent, Origin},
    accounts::{CodeCheck, Identifier, NewCode, NewUser, UserCreated},
};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Json, Problem,
    auth::{self, ClientOrigin, CurrentUser},
    identifier::identifier,
    password::check_new_password,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/verify", post(verify))
        .route("/v1/auth/resend", post(resend))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/logout", post(logout))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Either `email` or `phone` (E.164, e.g. `+4915112345678`).
    pub email: Option<String>,
    pub phone: Option<String>,
    /// 8 to 72 bytes, not easy to guess (zxcvbn score 3 or more) and not
    /// made of the email or phone.
    pub password: String,
    /// `YYYY-MM-DD`, 1900-01-01 or later; accounts are for adults only (18+).
    #[schema(format = Date)]
    pub birth_date: String,
    /// Another account's referral code.
    pub referral_code: Option<String>,
    /// The language notices go out in: `en` (the default), `zh-Hans` or
    /// `zh-Hant`.
    #[schema(value_type = Option<String>, example = "en")]
    pub locale: Option<kiln_jobs::Locale>,
}

/// The answer to a sign-up or a request for a new code: the same whether
/// or not the address has an account, so it tells nobody which do.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationSent {
    /// Always `verification_sent`: a code (or, for an address that has an
    /// account already, a notice) is on its way to the address.
    pub status: String,
}

impl VerificationSent {
    pub(super) fn new() -> VerificationSent {
        VerificationSent {
            status: "verification_sent".to_owned(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The email or phone the code was sent to.
    pub email: Option<String>,
    pub phone: Option<String>,
    /// The 6 digits sent.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    /// Always `verified`: the account can sign in.
    pub status: String,
    /// This account's own referral code, to share. Shown here, to whoever
    /// proved they hold the address, rather than at sign-up, whose answer
    /// must not differ between new and taken addresses.
    pub referral_code: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    pub email: Option<String>,
    pub phone: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: chrono::DateTime<Utc>,
}

/// The earliest birth date accepted: anything before is a typo or a
/// default value (`0000-01-01`), not a person.
const EARLIEST_BIRTH_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(date) => date,
    None => panic!("1900-01-01 is a date"),
};

fn age_on(birth: NaiveDate, today: NaiveDate) -> i32 {
    let mut age = today.year() - birth.year();
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    age
}

/// A birth date that a living adult can have.
fn birth_date(text: &str, today: NaiveDate) -> Result<NaiveDate, Problem> {
    let birth = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| Problem::invalid("birth_date must be a date as YYYY-MM-DD"))?;
    if birth < EARLIEST_BIRTH_DATE {
        return Err(Problem::invalid("birth_date must be 1900-01-01 or later"));
    }
    if birth > today {
        return Err(Problem::invalid("birth_date is in the future"));
    }
    if age_on(birth, today) < 18 {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "underage",
            "kiln is for people aged 18 and over",
        ));
    }
    Ok(birth)
}

fn referral_code() -> String {
    // 10 characters from an alphabet without look-alikes.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Counts one code or notice for this address against
/// `api.code_resend_interval_secs` and `api.codes_per_hour`, whether or
/// not the address has an account; past them, 429 `rate_limited`.
pub(super) async fn throttle_sends(
    state: &AppState,
    identifier: &Identifier,
) -> Result<(), Problem> {
    let key = state.codes.pseudonym("code_sends", identifier.as_str());
    match state.throttle.hit(&key, &state.config.code_windows()).await {
        Ok(None) => Ok(()),
        Ok(Some(wait)) => Err(Problem::rate_limited(
            wait,
            "a code was sent to this address a short while ago; wait before asking again",
        )),
        Err(e) => Err(Problem::unavailable(format!("code throttle: {e}"))),
    }
}

/// Wrong passwords counted per address (a pseudonym of it, whether or not
/// it has an account, so the answer tells nothing) and per IP, in every
/// `serve` process alike when the throttle is Redis.
pub(super) struct LoginThrottle<'a> {
    state: &'a AppState,
    address_key: String,
    ip_key: Option<String>,
}

impl<'a> LoginThrottle<'a> {
    pub(super) fn new(state: &'a AppState, identifier: &Identifier, origin: &Origin) -> Self {
        LoginThrottle {
            state,
            address_key: state.codes.pseudonym("login_failures", identifier.as_str()),
            ip_key: origin
                .ip
                .as_deref()
                .map(|ip| state.codes.pseudonym("login_failures_ip", ip)),
        }
    }

    fn keys(&self) -> impl Iterator<Item = (&str, [crate::Window; 1])> {
        let (per_address, per_ip) = self.state.config.login_windows();
        std::iter::once((self.address_key.as_str(), per_address))
            .chain(self.ip_key.as_deref().map(|k| (k, per_ip)))
    }

    /// 429 `rate_limited` while the address or the IP has used up its
    /// wrong passwords.
    pub(super) async fn refuse_when_full(&self) -> Result<(), Problem> {
        for (key, windows) in self.keys() {
            match self.state.throttle.peek(key, &windows).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    return Err(Problem::rate_limited(
                        wait,
                        "too many wrong passwords; wait before trying again",
                    ));
                }
                Err(e) => return Err(Problem::unavailable(format!("login throttle: {e}"))),
            }
        }
        Ok(())
    }

    /// Counts a wrong password against the address and the IP. (A window
    /// filled meanwhile by a concurrent guess counts this one no more.)
    pub(super) async fn count_failure(&self) -> Result<(), Problem> {
        for (key, windows) in self.keys() {
            if let Err(e) = self.state.throttle.hit(key, &windows).await {
                return Err(Problem::unavailable(format!("login throttle: {e}")));
            }
        }
        Ok(())
    }
}

/// Enqueues a `send_email` or `send_sms` job (by the identifier's kind)
/// with this notice for the user.
pub(super) async fn notify(
    state: &AppState,
    identifier: &Identifier,
    user_id: UserId,
    notice: Notice,
) -> Result<(), Problem> {
    let job = match identifier {
        Identifier::Email(_) => NewJob::of(&SendEmail { user_id, notice }),
        Identifier::Phone(_) => NewJob::of(&SendSms { user_id, notice }),
    }
    .map_err(Problem::internal)?;
    state.store.enqueue(job).await?;
    Ok(())
}

/// A notice the law does not require (a sign-in from a new IP, a sign-up
/// attempt on a taken address): not sent to an account its owner
/// restricted.
async fn notify_unless_restricted(
    state: &AppState,
    identifier: &Identifier,
    user_id: UserId,
    notice: Notice,
) -> Result<(), Problem> {
    if state.store.is_restricted(user_id).await? {
        return Ok(());
    }
    notify(state, identifier, user_id, notice).await
}

/// Issues a new code for the user (in place of any earlier one) and
/// enqueues it. The job carries the code's row id, not the code: the
/// worker derives the code under the shared key when it sends. Not one
/// transaction: should the enqueue fail, the user asks for another code.
///
/// `confirms` is set when the code confirms a new address for the account
/// (`identifier`, where it is sent): verifying it moves the address in.
pub(super) async fn send_code(
    state: &AppState,
    identifier: &Identifier,
    user_id: UserId,
    confirms_new_address: bool,
) -> Result<(), Problem> {
    let code_id = Uuid::now_v7();
    let ttl = state.config.code_ttl_secs;
    let code = state.codes.code(code_id);
    state
        .store
        .issue_code(NewCode {
            id: code_id,
            user_id,
            code_hash: state.codes.code_hash(user_id, &code),
            expires_at: Utc::now() + chrono::Duration::seconds(ttl as i64),
            contact: confirms_new_address.then(|| identifier.clone()),
        })
        .await?;
    let minutes_valid = u32::try_from(ttl.div_ceil(60)).unwrap_or(u32::MAX);
    notify(
        state,
        identifier,
        user_id,
        Notice::AccountVerification {
            code_id,
            minutes_valid,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/auth/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 202, description = "a verification code is on its way to the address; an address that already has an account gets the same answer (and a notice instead of a code)", body = VerificationSent),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "invalid input (`invalid_input`), a weak password (`weak_password`), or under 18 (`underage`)", body = Problem),
        (status = 429, description = "a code went to this address a short while ago (`rate_limited`, with `Retry-After`)", body = Problem),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Json(req): Json<RegisterRequest>,
) -> Result<impl IntoResponse, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    check_new_password(&req.password, identifier.as_str())?;
    let birth = birth_date(&req.birth_date, Utc::now().date_naive())?;
    throttle_sends(&state, &identifier).await?;
    // Hashed whether or not the address is taken, so both answer alike in
    // time as in content.
    let password_hash = auth::hash_password(req.password, state.config.bcrypt_cost).await?;
    let user = NewUser {
        identifier: identifier.clone(),
        password_hash,
        birth_date: birth,
        referral_code: referral_code(),
        referred_by_code: req.referral_code.map(|c| c.trim().to_uppercase()),
        locale: req.locale.unwrap_or_default(),
    };
    match state.store.create_user(user).await? {
        UserCreated::Created(user_id) => {
            state
                .store
                .record_access(Some(user_id), AccessEvent::Register, &origin)
                .await?;
            // The address it was made from is known to the account: a
            // first sign-in from there is not news.
            auth::note_origin(&state, user_id, &origin).await?;
            send_code(&state, &identifier, user_id, false).await?;
        }
        UserCreated::Taken => {
            // A deleted account keeps its address but is told nothing.
            if let Some(existing) = state.store.login_record(&identifier).await? {
                let event = AccessEvent::RegistrationAttempt;
                state
                    .store
                    .record_access(Some(existing.user_id), event, &origin)
                    .await?;
                notify_unless_restricted(
                    &state,
                    &identifier,
                    existing.user_id,
                    Notice::RegistrationAttempt,
                )
                .await?;
            }
        }
        UserCreated::UnknownReferral => {
            return Err(Problem::invalid("referral_code is not known"));
        }
    }
    Ok((StatusCode::ACCEPTED, Json(VerificationSent::new())))
}

/// A code as the user typed it, normalised (fullwidth digits are digits):
/// 422 unless it is the 6 digits a code has.
pub(super) fn typed_code(raw: &str) -> Result<String, Problem> {
    let code: String = raw.trim().nfkc().collect();
    if code.len() != CODE_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::invalid("code must be the 6 digits that were sent"));
    }
    Ok(code)
}

pub(super) fn invalid_code() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_code",
        "the code is wrong, expired or used up; ask for a new one at POST /v1/auth/resend",
    )
}

#[utoipa::path(post, path = "/v1/auth/verify", tag = "accounts",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "the account is verified and can sign in", body = Verified),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "`invalid_code`: the code is wrong, expired, used, or its 5 tries are spent (an unknown or already verified address answers the same); `invalid_input`: not 6 digits", body = Problem),
    ))]
async fn verify(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Json(req): Json<VerifyRequest>,
) -> Result<Json<Verified>, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    let code = typed_code(&req.code)?;
    let (outcome, account) = match state.store.login_record(&identifier).await? {
        Some(record) if !record.verified => {
            let hash = state.codes.code_hash(record.user_id, &code);
            let grants = state.credits.verification_grants();
            let outcome = state
                .store
                .check_code(record.user_id, &hash, grants)
                .await?;
            (outcome, Some(record.user_id))
        }
        _ => (CodeCheck::NoLiveCode, None),
    };
    match (outcome, account) {
        (CodeCheck::Verified, Some(user_id)) => {
            state
                .store
                .record_access(Some(user_id), AccessEvent::Verify, &origin)
                .await?;
            Ok(Json(Verified {
                status: "verified".to_owned(),
                referral_code: state.store.referral_code(user_id).await?,
            }))
        }
        (CodeCheck::Wrong { .. }, Some(user_id)) => {
            let event = AccessEvent::VerifyFailed;
            state
                .store
                .record_access(Some(user_id), event, &origin)
                .await?;
            Err(invalid_code())
        }
        _ => Err(invalid_code()),
    }
}

#[utoipa::path(post, path = "/v1/auth/resend", tag = "accounts",
    request_body = ResendRequest,
    responses(
        (status = 202, description = "a new code is on its way when the address has an unverified account; the same answer otherwise", body = VerificationSent),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 422, description = "invalid input", body = Problem),
        (status = 429, description = "`rate_limited`: one code a minute and 5 an hour per address (`api.code_resend_interval_secs`, `api.codes_per_hour`); `Retry-After` says when to ask again", body = Problem),
    ))]
async fn resend(
    State(state): State<AppState>,
    Json(req): Json<ResendRequest>,
) -> Result<impl IntoResponse, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    throttle_sends(&state, &identifier).await?;
    if let Some(record) = state.store.login_record(&identifier).await?
        && !record.verified
    {
        send_code(&state, &identifier, record.user_id, false).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(VerificationSent::new())))
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "signed in", body = Session),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 401, description = "wrong email, phone or password", body = Problem),
        (status = 403, description = "`unverified`: the password is right but the address is not verified yet", body = Problem),
        (status = 422, description = "invalid input", body = Problem),
        (status = 429, description = "`rate_limited`: 5 wrong passwords for this address, or 50 from this IP, in 15 minutes (`api.login_failures_per_address`, `api.login_failures_per_ip`, `api.login_failure_window_secs`); `Retry-After` says when to try again", body = Problem),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Json(req): Json<LoginRequest>,
) -> Result<Json<Session>, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    let user_id = check_password(&state, &identifier, req.password, &origin).await?;
    let ttl = state.config.token_ttl_secs;
    let (token, expires_at) =
        open_session(&state, &identifier, user_id, &origin, ttl, None).await?;
    Ok(Json(Session { token, expires_at }))
}

/// The account whose password this is, checked as `POST /v1/auth/login`
/// checks it (the operator page's sign-in too): refused while the address
/// or IP has used up its wrong passwords (429), 401 for a wrong address or
/// password (counted, and logged), 403 `unverified` after a right password
/// for an unverified address.
pub(super) async fn check_password(
    state: &AppState,
    identifier: &Identifier,
    password: String,
    origin: &Origin,
) -> Result<UserId, Problem> {
    let throttled = LoginThrottle::new(state, identifier, origin);
    // Before the password is checked: a right password must not get in
    // past the limit either, or the limit would tell a guesser when it
    // guessed right.
    throttled.refuse_when_full().await?;
    let record = state.store.login_record(identifier).await?;
    let (account, hash) = match record {
        Some(r) => (Some((r.user_id, r.verified)), r.password_hash),
        None => (None, auth::decoy_hash(state.config.bcrypt_cost)),
    };
    let matches = auth::verify_password(password, hash).await.unwrap_or(false);
    let Some((user_id, verified)) = account.filter(|_| matches) else {
        let user = account.map(|(user_id, _)| user_id);
        state
            .store
            .record_access(user, AccessEvent::LoginFailed, origin)
            .await?;
        throttled.count_failure().await?;
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong email, phone or password",
        ));
    };
    // Only after the password matched: to anyone without it, an unverified
    // account looks like any other.
    if !verified {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "unverified",
            "verify your email or phone first with the code that was sent (POST /v1/auth/verify); POST /v1/auth/resend sends a new one",
        ));
    }
    Ok(user_id)
}

/// Opens a session of `ttl_secs` for the account: its new token (stored
/// only as its hash) and when it expires. Logged as a login (with `detail` when given),
/// and a first sign-in from this IP is told to the account's address.
pub(super) async fn open_session(
    state: &AppState,
    identifier: &Identifier,
    user_id: UserId,
    origin: &Origin,
    ttl_secs: u64,
    detail: Option<serde_json::Value>,
) -> Result<(String, chrono::DateTime<Utc>), Problem> {
    let token = auth::new_token();
    // A TTL past what a timestamp holds lasts as long as one can.
    let expires_at = i64::try_from(ttl_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|ttl| Utc::now().checked_add_signed(ttl))
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
    state
        .store
        .create_session(user_id, &auth::token_hash(&token), expires_at)
        .await?;
    match detail {
        Some(detail) => {
            state
                .store
                .record_audit(user_id, AccessEvent::Login, origin, &detail)
                .await?;
        }
        None => {
            state
                .store
                .record_access(Some(user_id), AccessEvent::Login, origin)
                .await?;
        }
    }
    if let Some(entry_id) = auth::note_origin(state, user_id, origin).await? {
        let notice = Notice::NewLoginEntry { entry_id };
        notify_unless_restricted(state, identifier, user_id, notice).await?;
    }
    Ok((token, expires_at))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "the token is revoked"),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn logout(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    user: CurrentUser,
) -> Result<StatusCode, Problem> {
    state.store.revoke_session(&user.token_hash).await?;
    state
        .store
        .record_access(Some(user.id), AccessEvent::Logout, &origin)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or(NaiveDate::MIN)
    }

    #[test]
    fn age_counts_birthdays() {
        assert_eq!(age_on(d("2008-11-26"), d("2026-11-25")), 17);
        assert_eq!(age_on(d("2008-11-25"), d("2026-11-25")), 18);
    }

    #[test]
    fn birth_dates_must_be_possible_and_adult() {
        let today = d("2026-11-25");
        let detail = |s: &str| birth_date(s, today).err().map(|p| (p.code, p.detail));
        assert_eq!(birth_date("1990-12-10", today).ok(), Some(d("1990-12-10")));
        assert_eq!(birth_date("1900-01-01", today).ok(), Some(d("1900-01-01")));
        for impossible in ["0000-01-01", "1800-01-01", "1899-12-31"] {
            assert_eq!(
                detail(impossible),
                Some((
                    "invalid_input",
                    "birth_date must be 1900-01-01 or later".to_owned()
                )),
                "{impossible}"
            );
        }
        assert_eq!(
            detail("2026-11-26").map(|d| d.1),
            Some("birth_date is in the future".to_owned())
        );
        assert_eq!(detail("2008-11-26").map(|d| d.0), Some("underage"));
        assert_eq!(detail("1990-02-30").map(|d| d.0), Some("invalid_input"));
        assert_eq!(detail("10/12/1990").map(|d| d.0), Some("invalid_input"));
    }
}
