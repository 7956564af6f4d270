//! The `Idempotency-Key` header, read the same way by every route that
//! enqueues work.

use axum::http::HeaderMap;

use crate::Problem;

const MAX_KEY_LEN: usize = 255;

/// `None` without the header; a 400 problem when it is not 1 to 255
/// visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Problem::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}
