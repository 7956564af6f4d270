//! Bearer tokens: opaque random strings, stored only as SHA-256 hashes.

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine;
use kiln_jobs::UserId;
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
        let hash = token_hash(token);
        match state.store.session_user(&hash).await? {
            Some(id) => Ok(CurrentUser {
                id,
                token_hash: hash,
            }),
            None => Err(Problem::unauthorized()),
        }
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
