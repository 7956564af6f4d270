//! What every HTTP provider client shares: a client with timeouts and no
//! redirects, and the retry decision made from the wire (status, headers,
//! error body) in one place, so every provider retries the same way:
//! 408/409/429/5xx, timeouts and dropped connections are transient and
//! honour `retry-after-ms` / `Retry-After`; other statuses are permanent;
//! `x-should-retry` overrides when the provider sends it.

use std::time::Duration;

use reqwest::{
    StatusCode,
    header::{HeaderMap, RETRY_AFTER},
};

use crate::ProviderError;

/// The longest `Retry-After` kiln honours: beyond it the job's own backoff
/// (and the next attempt's answer) decides.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A provider's HTTP client: connect and total timeouts, no redirects (an
/// API answering with a redirect is a misconfiguration, not something to
/// follow with the key attached), no proxy from the environment.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        // Only fails when the TLS backend cannot initialise: a broken build,
        // not a runtime condition.
        .expect("the HTTP client builds")
}

/// How long the provider asked us to wait: `retry-after-ms` (OpenAI), then
/// `Retry-After` as seconds or an HTTP date. Capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let wait = if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        Duration::try_from_secs_f64(ms / 1000.0).ok()
    } else {
        let value = text(RETRY_AFTER.as_str())?.trim();
        match value.parse::<f64>() {
            Ok(secs) => Duration::try_from_secs_f64(secs).ok(),
            Err(_) => {
                let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
                (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .ok()
                    .or(Some(Duration::ZERO))
            }
        }
    }?;
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Statuses worth another try with the same request.
pub fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// The error for a non-success answer. `code` is the provider's own error
/// code when its body had one (kept for the job's error history), else a
/// name for the status; `message` is the provider's message.
pub fn status_error(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    code: Option<String>,
    message: Option<String>,
) -> ProviderError {
    let code = code.unwrap_or_else(|| status_code_name(status));
    let message = format!(
        "{provider} answered {}: {}",
        status.as_u16(),
        message.as_deref().unwrap_or("(no message)")
    );
    let should_retry = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
    if should_retry.unwrap_or_else(|| is_transient_status(status)) {
        ProviderError::Transient {
            code,
            message,
            retry_after: retry_after(headers),
        }
    } else {
        ProviderError::Permanent { code, message }
    }
}

fn status_code_name(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        500..=599 => "server_error",
        _ => "unexpected_status",
    }
    .to_owned()
}

/// A request that got no answer: timeouts and dropped or refused
/// connections are transient; a request kiln could not even build is not.
pub fn transport_error(provider: &str, e: &reqwest::Error) -> ProviderError {
    let detail = without_url(e);
    if e.is_timeout() {
        ProviderError::transient("timeout", format!("{provider} did not answer in time"))
    } else if e.is_builder() {
        ProviderError::permanent("bad_request", format!("{provider}: {detail}"))
    } else if e.is_decode() {
        ProviderError::transient(
            "invalid_response",
            format!("{provider} sent an unreadable answer: {detail}"),
        )
    } else {
        ProviderError::transient(
            "connection_failed",
            format!("{provider} could not be reached: {detail}"),
        )
    }
}

/// The largest image a provider may hand back (an 8K PNG stays well under).
pub const MAX_IMAGE_BYTES: usize = 128 * 1024 * 1024;

/// Downloads a provider's result file (no key: CDN links are signed by the
/// provider), stopping as soon as it passes [`MAX_IMAGE_BYTES`]. `what`
/// names the file in errors, e.g. "the upscaled image".
pub async fn download_image(
    client: &reqwest::Client,
    provider: &str,
    url: &str,
    what: &str,
) -> Result<bytes::Bytes, ProviderError> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport_error(provider, &e))?;
    if !response.status().is_success() {
        return Err(status_error(
            provider,
            response.status(),
            response.headers(),
            Some("image_download_failed".to_owned()),
            Some(format!("{what} could not be downloaded")),
        ));
    }
    let too_large = || {
        ProviderError::transient(
            "invalid_image",
            format!("{provider} sent {what} over {MAX_IMAGE_BYTES} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_IMAGE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(provider, &e))?
    {
        if bytes.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// reqwest's message without the request URL: the error history needs the
/// cause, not the address (which may carry a signed query string).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "20")]);
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_seconds_and_http_dates_are_read() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
        let date = soon.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let wait = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(25));
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(
            retry_after(&headers(&[("retry-after", past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_is_capped() {
        let h = headers(&[("retry-after", "86400")]);
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn transient_and_permanent_statuses() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(
                !is_transient_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn status_errors_keep_the_providers_code_and_wait() {
        let e = status_error(
            "openai",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after-ms", "250")]),
            Some("rate_limit_exceeded".into()),
            Some("Rate limit reached".into()),
        );
        assert_eq!(
            e,
            ProviderError::Transient {
                code: "rate_limit_exceeded".into(),
                message: "openai answered 429: Rate limit reached".into(),
                retry_after: Some(Duration::from_millis(250)),
            }
        );
        let e = status_error(
            "openai",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            None,
            None,
        );
        assert_eq!(
            e,
            ProviderError::permanent("unauthorized", "openai answered 401: (no message)")
        );
    }

    #[test]
    fn x_should_retry_overrides_the_status() {
        let e = status_error(
            "openai",
            StatusCode::BAD_REQUEST,
            &headers(&[("x-should-retry", "true")]),
            None,
            None,
        );
        assert!(matches!(e, ProviderError::Transient { .. }));
        let e = status_error(
            "openai",
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("x-should-retry", "false")]),
            None,
            None,
        );
        assert!(matches!(e, ProviderError::Permanent { .. }));
    }
}
