//! Bearer tokens: opaque random strings, stored only as SHA-256 hashes.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::request::Parts,
};
use base64::Engine;
use kiln_jobs::UserId;
use kiln_store::access_log::{AccessEvent, Origin};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{AppState, Problem};

/// A new token: 32 random bytes, URL-safe base64.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The signed-in user of a request, from its bearer token.
pub struct CurrentUser {
    pub id: UserId,
    pub token_hash: String,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let token = bearer(parts).ok_or_else(Problem::unauthorized)?;
        signed_in(parts, state, token).await
    }
}

/// The user whose live session `token` is, or 401.
async fn signed_in(parts: &Parts, state: &AppState, token: &str) -> Result<CurrentUser, Problem> {
    let hash = token_hash(token);
    let Some(id) = state.store.session_user(&hash).await? else {
        return Err(Problem::unauthorized());
    };
    // Every authenticated request passes here (the status poll too):
    // the IP is looked up in memory, and only a pair this process has
    // not seen reads the user agent and asks the database.
    if let Some(ip) = client_ip(parts, &state.config)
        && state.seen_ips.first_here(id, ip)
    {
        note_new_here(state, id, &origin(Some(ip), parts)).await?;
    }
    Ok(CurrentUser {
        id,
        token_hash: hash,
    })
}

/// The cookie the operator page signs in with (`POST /admin/login`): a
/// session token like a bearer token, sent by the browser only to
/// `/admin` paths.
pub const ADMIN_COOKIE: &str = "kiln_admin";

/// The header a cookie-authenticated request that changes something must
/// carry the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of the admin cookie, when the request carries one.
pub fn admin_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == ADMIN_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The CSRF token of the session whose token hashes to `token_hash`: an
/// HMAC under the server's code key, so it is fixed for the session,
/// unguessable without the key, and needs nothing stored. The page reads
/// it from its `<meta name="csrf-token">` and sends it as `X-CSRF-Token`.
pub fn csrf_token(state: &AppState, token_hash: &str) -> String {
    state.codes.pseudonym("admin_csrf", token_hash)
}

/// Whether `given` is the session's CSRF token (compared in constant time).
pub fn csrf_matches(state: &AppState, token_hash: &str, given: &str) -> bool {
    let expected = csrf_token(state, token_hash);
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// 403 `csrf_token`: a cookie-authenticated change without the session's
/// CSRF token.
pub fn csrf_refused() -> Problem {
    Problem::new(
        axum::http::StatusCode::FORBIDDEN,
        "csrf_token",
        "a change made with the operator page's cookie needs the page's CSRF token in X-CSRF-Token",
    )
}

/// The signed-in user of a request that starts jobs: 403 `restricted`
/// when the owner restricted the account.
pub struct ActiveUser(pub CurrentUser);

impl FromRequestParts<AppState> for ActiveUser {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        if state.store.is_restricted(user.id).await? {
            return Err(Problem::restricted());
        }
        Ok(ActiveUser(user))
    }
}

/// A signed-in operator (the role `kiln user grant-operator` gives): any
/// other account answers 403 `forbidden`.
pub struct Operator(pub UserId);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Problem;

    /// A bearer token, or else the operator page's cookie; a request with
    /// the cookie that may change something (any method but GET and HEAD)
    /// must carry the session's CSRF token too, or it is refused with 403
    /// `csrf_token` (a bearer token cannot be sent by another site's page,
    /// a cookie can).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let user = match bearer(parts) {
            Some(token) => signed_in(parts, state, token).await?,
            None => {
                let token = admin_cookie(parts).ok_or_else(Problem::unauthorized)?;
                let user = signed_in(parts, state, &token).await?;
                let safe = matches!(
                    parts.method,
                    axum::http::Method::GET | axum::http::Method::HEAD
                );
                let given = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !safe && !csrf_matches(state, &user.token_hash, given) {
                    return Err(csrf_refused());
                }
                user
            }
        };
        if !state.store.is_operator(user.id).await? {
            return Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this needs the operator role",
            ));
        }
        Ok(Operator(user.id))
    }
}

/// Hashes a password with bcrypt on the blocking pool: a cost-12 hash takes
/// a quarter second of CPU, which must not stall the async workers.
pub async fn hash_password(password: String, cost: u32) -> Result<String, Problem> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(Problem::internal)?
        .map_err(Problem::internal)
}

pub async fn verify_password(password: String, hash: String) -> Result<bool, Problem> {
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
        .await
        .map_err(Problem::internal)?
        .map_err(Problem::internal)
}

/// A hash to verify against when the account does not exist, so a login
/// for an unknown email takes as long as one with a wrong password.
pub fn decoy_hash(cost: u32) -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| bcrypt::hash("kiln-decoy-password", cost).unwrap_or_default())
        .clone()
}

/// The longest user agent kept; beyond it the rest is cut.
const MAX_USER_AGENT: usize = 512;

/// Where a request came from: the client's IP and user agent, for the
/// access log. The IP is the connection's peer, or, when
/// `api.client_ip_header` names one, the last address in that header (the
/// one the trusted proxy in front of kiln appended); never a header the
/// operator did not name, which any client could forge.
pub struct ClientOrigin(pub Origin);

impl ClientOrigin {
    pub fn of(parts: &Parts, config: &crate::ApiConfig) -> Origin {
        origin(client_ip(parts, config), parts)
    }
}

/// The client's IP, as [`ClientOrigin`] reads it.
pub fn client_ip(parts: &Parts, config: &crate::ApiConfig) -> Option<IpAddr> {
    let ip = match &config.client_ip_header {
        Some(header) => parts
            .headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok()),
        None => parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip()),
    };
    ip.map(|ip| ip.to_canonical())
}

fn origin(ip: Option<IpAddr>, parts: &Parts) -> Origin {
    let user_agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
    Origin {
        ip: ip.map(|ip| ip.to_string()),
        user_agent,
    }
}

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientOrigin(ClientOrigin::of(parts, &state.config)))
    }
}

/// Above this many pairs the memory of [`SeenIps`] starts again (each
/// forgotten pair costs one more database probe, nothing else).
const SEEN_IPS_CAP: usize = 100_000;

/// The (account, IP) pairs this process has checked lately, so a token's
/// use asks the database whether its IP is new only once per process. A
/// request that finds its pair here allocates nothing.
#[derive(Default)]
pub struct SeenIps(Mutex<HashSet<(UserId, IpAddr)>>);

impl SeenIps {
    /// True when this process had not seen the pair (and now has).
    fn first_here(&self, user: UserId, ip: IpAddr) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&(user, ip)) {
            return false;
        }
        if seen.len() >= SEEN_IPS_CAP {
            seen.clear();
        }
        seen.insert((user, ip));
        true
    }
}

/// Records that `user` was used from `origin`'s IP; a first use from it
/// is a `new_ip` entry of the access log, whose id is answered.
pub async fn note_origin(
    state: &AppState,
    user: UserId,
    origin: &Origin,
) -> Result<Option<i64>, Problem> {
    let Some(ip) = origin.ip.as_deref().and_then(|ip| ip.parse().ok()) else {
        return Ok(None);
    };
    if !state.seen_ips.first_here(user, ip) {
        return Ok(None);
    }
    note_new_here(state, user, origin).await
}

/// The database's answer for a pair this process had not seen.
async fn note_new_here(
    state: &AppState,
    user: UserId,
    origin: &Origin,
) -> Result<Option<i64>, Problem> {
    let Some(ip) = &origin.ip else {
        return Ok(None);
    };
    if !state.store.note_ip(user, ip).await? {
        return Ok(None);
    }
    let entry = state
        .store
        .record_access(Some(user), AccessEvent::NewIp, origin)
        .await?;
    Ok(Some(entry))
}
