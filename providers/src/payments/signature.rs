//! The two signature schemes merchants of record sign their notifications
//! with, checked over the raw body before anything parses it: Paddle's
//! `Paddle-Signature` and Standard Webhooks (Polar, Dodo Payments, and
//! kiln's own dev checkout). Both are HMAC-SHA256; tags are compared in
//! constant time (`Mac::verify_slice`), and a timestamp outside the
//! tolerance is refused even with a valid tag, so a captured delivery
//! cannot be replayed later.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

use super::WebhookRefusal;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length")
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, WebhookRefusal> {
    headers
        .get(name)
        .ok_or(WebhookRefusal::Unsigned(name))?
        .to_str()
        .map_err(|_| WebhookRefusal::BadSignature)
}

/// Refuses a timestamp (unix seconds) further than `tolerance` from `now`,
/// in either direction.
fn fresh(ts: &str, now: DateTime<Utc>, tolerance: Duration) -> Result<(), WebhookRefusal> {
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| WebhookRefusal::BadSignature)?;
    let skew = now.timestamp().abs_diff(ts);
    if skew > tolerance.as_secs() {
        return Err(WebhookRefusal::Stale);
    }
    Ok(())
}

/// `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]` (several `h1` while
/// a secret rotates): HMAC-SHA256 under the destination's secret key over
/// `"{ts}:{raw body}"`.
pub fn verify_paddle(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), WebhookRefusal> {
    let value = header(headers, "paddle-signature")?;
    let mut ts = None;
    let mut tags = Vec::new();
    for part in value.split(';') {
        match part.trim().split_once('=') {
            Some(("ts", v)) => ts = Some(v),
            Some(("h1", v)) => tags.push(v),
            _ => {}
        }
    }
    let ts = ts.ok_or(WebhookRefusal::BadSignature)?;
    let mut signed = mac(secret);
    signed.update(ts.as_bytes());
    signed.update(b":");
    signed.update(body);
    let valid = tags
        .iter()
        .any(|tag| hex::decode(tag).is_ok_and(|tag| signed.clone().verify_slice(&tag).is_ok()));
    if !valid {
        return Err(WebhookRefusal::BadSignature);
    }
    fresh(ts, now, tolerance)
}

/// The `Paddle-Signature` value Paddle would send (for fakes and tests).
pub fn sign_paddle(secret: &[u8], ts: i64, body: &[u8]) -> String {
    let mut signed = mac(secret);
    signed.update(format!("{ts}:").as_bytes());
    signed.update(body);
    format!("ts={ts};h1={}", hex::encode(signed.finalize().into_bytes()))
}

/// A Standard Webhooks secret: `whsec_` then base64, or bare base64.
pub fn standard_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    let secret = BASE64
        .decode(encoded)
        .map_err(|_| "not a Standard Webhooks secret (whsec_ then base64)".to_owned())?;
    if secret.len() < 16 {
        return Err("a Standard Webhooks secret must hold at least 16 bytes".into());
    }
    Ok(secret)
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp` (unix seconds) and
/// `webhook-signature` (space-separated `v1,<base64>` entries), HMAC-SHA256
/// under the decoded secret over `"{id}.{timestamp}.{raw body}"`. Returns
/// the `webhook-id`, which every redelivery repeats.
pub fn verify_standard(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<String, WebhookRefusal> {
    let id = header(headers, "webhook-id")?;
    let ts = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    let mut signed = mac(secret);
    signed.update(format!("{id}.{ts}.").as_bytes());
    signed.update(body);
    let valid = signatures.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|tag| BASE64.decode(tag).ok())
            .is_some_and(|tag| signed.clone().verify_slice(&tag).is_ok())
    });
    if !valid {
        return Err(WebhookRefusal::BadSignature);
    }
    fresh(ts, now, tolerance)?;
    if id.is_empty() || id.len() > 200 {
        return Err(WebhookRefusal::Malformed(
            "webhook-id is empty or too long".into(),
        ));
    }
    Ok(id.to_owned())
}

/// The three Standard Webhooks headers for a delivery.
pub fn sign_standard(secret: &[u8], id: &str, ts: i64, body: &[u8]) -> [(&'static str, String); 3] {
    let mut signed = mac(secret);
    signed.update(format!("{id}.{ts}.").as_bytes());
    signed.update(body);
    let tag = BASE64.encode(signed.finalize().into_bytes());
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", format!("v1,{tag}")),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(5);

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn at(ts: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(ts, 0).unwrap()
    }

    #[test]
    fn paddle_signatures_cover_the_timestamp_and_body_and_any_rotated_h1() {
        let secret = b"pdl_ntfset_01gkpjp8bkh3k8ch6y6a1k3n4h_6BBw1ndKWEZAJoSZdSMLeTRSTnFUMzlL";
        let body = br#"{"event_id":"evt_01","event_type":"transaction.completed"}"#;
        let header = sign_paddle(secret, 1_671_552_777, body);
        assert!(header.starts_with("ts=1671552777;h1="));
        let map = headers(&[("paddle-signature", header.clone())]);
        assert_eq!(
            verify_paddle(secret, &map, body, at(1_671_552_779), TOLERANCE),
            Ok(())
        );
        // A rotated secret: the valid h1 may be the second one.
        let rotating = header.replace("ts=1671552777;", "ts=1671552777;h1=00ff;");
        let map = headers(&[("paddle-signature", rotating)]);
        assert_eq!(
            verify_paddle(secret, &map, body, at(1_671_552_779), TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn paddle_refuses_altered_bodies_wrong_secrets_and_stale_times() {
        let secret = b"secret-one";
        let body = br#"{"event_id":"evt_01"}"#;
        let map = headers(&[("paddle-signature", sign_paddle(secret, 1000, body))]);
        let verify =
            |secret: &[u8], body: &[u8], now| verify_paddle(secret, &map, body, at(now), TOLERANCE);
        assert_eq!(
            verify(secret, br#"{"event_id":"evt_02"}"#, 1000),
            Err(WebhookRefusal::BadSignature)
        );
        assert_eq!(
            verify(b"secret-two", body, 1000),
            Err(WebhookRefusal::BadSignature)
        );
        assert_eq!(verify(secret, body, 1006), Err(WebhookRefusal::Stale));
        assert_eq!(verify(secret, body, 994), Err(WebhookRefusal::Stale));
        assert_eq!(verify(secret, body, 1005), Ok(()));
        assert_eq!(
            verify_paddle(secret, &HeaderMap::new(), body, at(1000), TOLERANCE),
            Err(WebhookRefusal::Unsigned("paddle-signature"))
        );
        for broken in ["ts=1000", "h1=abcd", "ts=x;h1=zz", ""] {
            let map = headers(&[("paddle-signature", broken.to_owned())]);
            assert_eq!(
                verify_paddle(secret, &map, body, at(1000), TOLERANCE),
                Err(WebhookRefusal::BadSignature),
                "{broken}"
            );
        }
    }

    /// The test vector of the Standard Webhooks reference libraries.
    #[test]
    fn standard_signatures_match_the_reference_vector() {
        let secret = standard_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let map = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp", "1614265330".into()),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
            ),
        ]);
        assert_eq!(
            verify_standard(
                &secret,
                &map,
                body,
                at(1_614_265_330),
                Duration::from_secs(300)
            ),
            Ok("msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned())
        );
        let signed = sign_standard(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(
            signed[2].1,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn standard_refuses_altered_bodies_stale_times_and_missing_headers() {
        let secret = [7u8; 32];
        let body = br#"{"type":"order.paid"}"#;
        let tolerance = Duration::from_secs(300);
        let signed = sign_standard(&secret, "msg_1", 10_000, body);
        let map = headers(&signed.clone().map(|(n, v)| (n, v)));
        assert_eq!(
            verify_standard(&secret, &map, b"{}", at(10_000), tolerance),
            Err(WebhookRefusal::BadSignature)
        );
        assert_eq!(
            verify_standard(&secret, &map, body, at(10_301), tolerance),
            Err(WebhookRefusal::Stale)
        );
        assert_eq!(
            verify_standard(&[8u8; 32], &map, body, at(10_000), tolerance),
            Err(WebhookRefusal::BadSignature)
        );
        // Another id with the same signature: the id is signed too.
        let mut other = signed.clone();
        other[0].1 = "msg_2".into();
        let map = headers(&other.map(|(n, v)| (n, v)));
        assert_eq!(
            verify_standard(&secret, &map, body, at(10_000), tolerance),
            Err(WebhookRefusal::BadSignature)
        );
        let map = headers(&signed[..2]);
        assert_eq!(
            verify_standard(&secret, &map, body, at(10_000), tolerance),
            Err(WebhookRefusal::Unsigned("webhook-signature"))
        );
        assert!(standard_secret("whsec_not base64!").is_err());
        assert!(standard_secret("whsec_c2hvcnQ=").is_err());
    }
}
