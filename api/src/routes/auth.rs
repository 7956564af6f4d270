use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use chrono::{Datelike, NaiveDate, Utc};
use kiln_store::accounts::{Identifier, NewUser, UserCreated};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Json, Problem,
    auth::{self, CurrentUser},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/logout", post(logout))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Either `email` or `phone` (E.164, e.g. `+4915112345678`).
    pub email: Option<String>,
    pub phone: Option<String>,
    /// 8 to 72 bytes.
    pub password: String,
    /// `YYYY-MM-DD`; accounts are for adults only (18+).
    pub birth_date: String,
    /// Another account's referral code.
    pub referral_code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub user_id: Uuid,
    /// This account's own referral code.
    pub referral_code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
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

fn identifier(email: Option<String>, phone: Option<String>) -> Result<Identifier, Problem> {
    match (email, phone) {
        (Some(e), None) => {
            let e = e.trim().to_lowercase();
            let valid = e.len() <= 254
                && e.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                })
                && !e.contains(char::is_whitespace);
            if valid {
                Ok(Identifier::Email(e))
            } else {
                Err(Problem::invalid("email is not a valid address"))
            }
        }
        (None, Some(p)) => {
            let p: String = p.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
            let digits = p.strip_prefix('+').unwrap_or("");
            if (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
                Ok(Identifier::Phone(p))
            } else {
                Err(Problem::invalid(
                    "phone must be in E.164 form, e.g. +4915112345678",
                ))
            }
        }
        (Some(_), Some(_)) => Err(Problem::invalid("give either email or phone, not both")),
        (None, None) => Err(Problem::invalid("email or phone is required")),
    }
}

fn age_on(birth: NaiveDate, today: NaiveDate) -> i32 {
    let mut age = today.year() - birth.year();
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    age
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

#[utoipa::path(post, path = "/v1/auth/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 202, description = "account created", body = Registered),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 409, description = "email or phone already registered", body = Problem),
        (status = 422, description = "invalid input, or under 18 (`underage`)", body = Problem),
    ))]
async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<impl IntoResponse, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    if req.password.len() < 8 || req.password.len() > 72 {
        return Err(Problem::invalid("password must be 8 to 72 bytes long"));
    }
    let birth = NaiveDate::parse_from_str(&req.birth_date, "%Y-%m-%d")
        .map_err(|_| Problem::invalid("birth_date must be a date as YYYY-MM-DD"))?;
    let today = Utc::now().date_naive();
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
    let password_hash = auth::hash_password(req.password, state.config.bcrypt_cost).await?;
    let referral_code = referral_code();
    let user = NewUser {
        identifier,
        password_hash,
        birth_date: birth,
        referral_code: referral_code.clone(),
        referred_by_code: req.referral_code.map(|c| c.trim().to_uppercase()),
    };
    match state.store.create_user(user).await? {
        UserCreated::Created(user_id) => Ok((
            StatusCode::ACCEPTED,
            Json(Registered {
                user_id: user_id.into(),
                referral_code,
            }),
        )),
        UserCreated::Taken => Err(Problem::conflict(
            "an account with this email or phone already exists",
        )),
        UserCreated::UnknownReferral => Err(Problem::invalid("referral_code is not known")),
    }
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "signed in", body = Session),
        (status = 400, description = "malformed JSON", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 415, description = "body is not application/json", body = Problem),
        (status = 401, description = "wrong email, phone or password", body = Problem),
        (status = 422, description = "invalid input", body = Problem),
    ))]
async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<Session>, Problem> {
    let identifier = identifier(req.email, req.phone)?;
    let record = state.store.login_record(&identifier).await?;
    let (user_id, hash) = match record {
        Some(r) => (Some(r.user_id), r.password_hash),
        None => (None, auth::decoy_hash(state.config.bcrypt_cost)),
    };
    let matches = auth::verify_password(req.password, hash)
        .await
        .unwrap_or(false);
    let Some(user_id) = user_id.filter(|_| matches) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong email, phone or password",
        ));
    };
    let token = auth::new_token();
    let expires_at = Utc::now() + chrono::Duration::seconds(state.config.token_ttl_secs as i64);
    state
        .store
        .create_session(user_id, &auth::token_hash(&token), expires_at)
        .await?;
    Ok(Json(Session { token, expires_at }))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "the token is revoked"),
        (status = 401, description = "no valid token", body = Problem),
    ))]
async fn logout(State(state): State<AppState>, user: CurrentUser) -> Result<StatusCode, Problem> {
    state.store.revoke_session(&user.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_birthdays() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(age_on(d("2008-11-26"), d("2026-11-25")), 17);
        assert_eq!(age_on(d("2008-11-25"), d("2026-11-25")), 18);
    }

    #[test]
    fn identifiers_are_normalised_and_checked() {
        assert_eq!(
            identifier(Some(" A@Example.COM ".into()), None).unwrap(),
            Identifier::Email("a@example.com".into())
        );
        assert!(identifier(Some("nope".into()), None).is_err());
        assert_eq!(
            identifier(None, Some("+49 151 1234-5678".into())).unwrap(),
            Identifier::Phone("+4915112345678".into())
        );
        assert!(identifier(None, Some("12345".into())).is_err());
        assert!(identifier(Some("a@b.co".into()), Some("+4915112345678".into())).is_err());
        assert!(identifier(None, None).is_err());
    }
}
