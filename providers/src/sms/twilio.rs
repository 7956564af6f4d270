//! Twilio's Messages API.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{SentMessage, SmsSender, validate_body, validate_e164};
use crate::{ProviderError, http, message::redact_contacts};

/// Who a Twilio message is sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    /// A Twilio number (E.164), short code or alphanumeric sender id.
    From(String),
    /// A Messaging Service, which picks the number itself.
    MessagingService(String),
}

/// Twilio's Messages API:
/// `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`.
#[derive(Debug, Clone)]
pub struct TwilioSms {
    client: reqwest::Client,
    base_url: String,
    account_sid: String,
    // SecretString: Debug prints [REDACTED].
    auth_token: SecretString,
    sender: TwilioSender,
}

impl TwilioSms {
    pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

    pub fn new(
        base_url: &str,
        account_sid: impl Into<String>,
        auth_token: SecretString,
        sender: TwilioSender,
        timeout: Duration,
    ) -> Self {
        TwilioSms {
            client: http::client(timeout),
            base_url: base_url.trim_end_matches('/').to_owned(),
            account_sid: account_sid.into(),
            auth_token,
            sender,
        }
    }
}

/// Twilio's error body: `{"code","message","more_info","status"}`.
#[derive(Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct TwilioMessage {
    sid: String,
}

/// Twilio error codes no retry can fix, with kiln's code for them. Twilio's
/// own message for these quotes the number, so ours replaces it.
fn permanent_twilio_code(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        21211 => ("invalid_phone", "the To number is not a valid phone number"),
        21610 => ("unsubscribed", "the recipient replied STOP to this sender"),
        21614 => ("invalid_phone", "the To number is not a mobile number"),
        21408 => (
            "region_not_enabled",
            "sending to the recipient's region is not enabled on the account",
        ),
        _ => return None,
    })
}

#[async_trait]
impl SmsSender for TwilioSms {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, to: &str, body: &str) -> Result<SentMessage, ProviderError> {
        validate_e164(to)?;
        validate_body(body)?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base_url, self.account_sid
        );
        let sender = match &self.sender {
            TwilioSender::From(from) => ("From", from.as_str()),
            TwilioSender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let response = self
            .client
            .post(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&[("To", to), sender, ("Body", body)])
            .send()
            .await
            .map_err(|e| http::transport_error("twilio", &e))?;

        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            return match response.json::<TwilioMessage>().await {
                Ok(message) => Ok(SentMessage {
                    provider_id: message.sid,
                }),
                // Accepted but unreadable: retrying could send the text twice.
                Err(_) => Err(ProviderError::permanent(
                    "invalid_response",
                    format!(
                        "twilio answered {} with an unreadable body; not retried, the message may have been sent",
                        status.as_u16()
                    ),
                )),
            };
        }
        let error: Option<TwilioError> = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (code, message) = error.map_or((None, None), |e| (e.code, e.message));
        if let Some((kiln_code, text)) = code.and_then(permanent_twilio_code) {
            return Err(ProviderError::permanent(
                kiln_code,
                format!(
                    "twilio answered {}: {}: {text}",
                    status.as_u16(),
                    code.unwrap_or(0)
                ),
            ));
        }
        let message = match (code, message) {
            (Some(code), Some(message)) => Some(format!("{code}: {}", redact_contacts(&message))),
            (Some(code), None) => Some(code.to_string()),
            (None, message) => message.map(|m| redact_contacts(&m)),
        };
        Err(http::status_error(
            "twilio", status, &headers, None, message,
        ))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::tests::{SID, TO, TOKEN};
    use super::*;

    const MESSAGES: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";

    fn twilio(base: &str, timeout: Duration) -> TwilioSms {
        TwilioSms::new(
            base,
            SID,
            SecretString::from(TOKEN),
            TwilioSender::From("+15550000000".into()),
            timeout,
        )
    }

    async fn answer(response: ResponseTemplate) -> Result<SentMessage, ProviderError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        twilio(&server.uri(), Duration::from_secs(5))
            .send(TO, "Your code is 123456")
            .await
    }

    fn twilio_error(status: u16, code: u32, message: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_json(serde_json::json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }))
    }

    #[tokio::test]
    async fn twilio_success_sends_the_exact_request() {
        let server = MockServer::start().await;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .and(header("authorization", format!("Basic {basic}").as_str()))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "sid": "SM0123456789abcdef0123456789abcdef",
                "status": "queued",
                "to": TO,
            })))
            .expect(1)
            .mount(&server)
            .await;
        let sent = twilio(&format!("{}/", server.uri()), Duration::from_secs(5))
            .send(TO, "Your code is 123456")
            .await
            .unwrap();
        assert_eq!(sent.provider_id, "SM0123456789abcdef0123456789abcdef");
        let requests = server.received_requests().await.unwrap();
        assert_eq!(
            String::from_utf8(requests[0].body.clone()).unwrap(),
            "To=%2B15551234567&From=%2B15550000000&Body=Your+code+is+123456"
        );
    }

    #[tokio::test]
    async fn twilio_messaging_service_replaces_from() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .respond_with(
                ResponseTemplate::new(201).set_body_json(serde_json::json!({"sid": "SMx"})),
            )
            .mount(&server)
            .await;
        let sms = TwilioSms::new(
            &server.uri(),
            SID,
            SecretString::from(TOKEN),
            TwilioSender::MessagingService("MG42".into()),
            Duration::from_secs(5),
        );
        sms.send(TO, "hi").await.unwrap();
        let requests = server.received_requests().await.unwrap();
        assert_eq!(
            String::from_utf8(requests[0].body.clone()).unwrap(),
            "To=%2B15551234567&MessagingServiceSid=MG42&Body=hi"
        );
    }

    #[tokio::test]
    async fn twilio_rate_limit_is_transient_with_retry_after() {
        let e = answer(
            twilio_error(429, 20429, "Too Many Requests").insert_header("retry-after", "12"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e,
            ProviderError::Transient {
                code: "rate_limited".into(),
                message: "twilio answered 429: 20429: Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(12)),
            }
        );
    }

    #[tokio::test]
    async fn twilio_503_is_transient() {
        let e = answer(ResponseTemplate::new(503)).await.unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "server_error");
    }

    #[tokio::test]
    async fn twilio_permanent_codes_are_named_and_hide_the_number() {
        for (code, kiln_code) in [
            (21211, "invalid_phone"),
            (21610, "unsubscribed"),
            (21614, "invalid_phone"),
            (21408, "region_not_enabled"),
        ] {
            let e = answer(twilio_error(
                400,
                code,
                "The 'To' number +15551234567 is not a valid phone number.",
            ))
            .await
            .unwrap_err();
            assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
            assert_eq!(e.code(), kiln_code);
            let text = e.to_string();
            assert!(text.contains(&code.to_string()), "{text}");
            assert!(!text.contains("5551234567"), "{text}");
        }
    }

    #[tokio::test]
    async fn twilio_other_errors_keep_the_code_without_the_number() {
        let e = answer(twilio_error(
            400,
            21602,
            "Message body is required for +15551234567",
        ))
        .await
        .unwrap_err();
        assert_eq!(
            e,
            ProviderError::permanent(
                "bad_request",
                "twilio answered 400: 21602: Message body is required for <number>"
            )
        );
    }

    #[tokio::test]
    async fn twilio_auth_failures_are_permanent() {
        for (status, code) in [(401, "unauthorized"), (403, "forbidden")] {
            let e = answer(twilio_error(status, 20003, "Authenticate"))
                .await
                .unwrap_err();
            assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
            assert_eq!(e.code(), code);
        }
    }

    #[tokio::test]
    async fn twilio_timeout_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(serde_json::json!({"sid": "SMx"}))
                    .set_delay(Duration::from_secs(2)),
            )
            .mount(&server)
            .await;
        let e = twilio(&server.uri(), Duration::from_millis(200))
            .send(TO, "hi")
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ProviderError::transient("timeout", "twilio did not answer in time")
        );
    }

    #[tokio::test]
    async fn twilio_dropped_connection_is_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let e = twilio(&format!("http://{addr}"), Duration::from_secs(5))
            .send(TO, "hi")
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "connection_failed");
        assert!(!e.to_string().contains(SID), "{e}");
    }

    #[tokio::test]
    async fn twilio_refuses_bad_numbers_without_a_request() {
        let server = MockServer::start().await;
        let e = twilio(&server.uri(), Duration::from_secs(5))
            .send("555-1234", "hi")
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_phone");
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn twilio_debug_redacts_the_token() {
        let text = format!("{:?}", twilio("http://x", Duration::from_secs(1)));
        assert!(!text.contains(TOKEN), "{text}");
    }
}
