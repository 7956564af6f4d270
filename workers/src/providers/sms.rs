//! Text messages: Twilio's Messages API and an offline outbox for
//! development. Verification codes and short notices only (PRIVACY.md P2);
//! phone numbers and bodies are never logged or put in error messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ProviderError;
use super::http;
use super::message::{redact_contacts, write_outbox};

pub use super::message::SentMessage;

/// Sends one text message.
#[async_trait]
pub trait SmsSender: Send + Sync + 'static {
    /// Recorded with each message: which provider sent it.
    fn name(&self) -> &'static str;
    /// `to` is an E.164 number; anything else is a permanent
    /// `invalid_phone` error before any request is made.
    async fn send(&self, to: &str, body: &str) -> Result<SentMessage, ProviderError>;
}

/// Checks `to` is E.164: `+`, then 8 to 15 digits, the first not 0.
/// The error never repeats the number.
pub fn validate_e164(to: &str) -> Result<(), ProviderError> {
    let valid = to.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    });
    if valid {
        Ok(())
    } else {
        Err(ProviderError::permanent(
            "invalid_phone",
            "the recipient is not an E.164 number (+ then 8 to 15 digits)",
        ))
    }
}

fn validate_body(body: &str) -> Result<(), ProviderError> {
    if body.trim().is_empty() {
        return Err(ProviderError::permanent(
            "empty_body",
            "a text message needs a body",
        ));
    }
    Ok(())
}

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

/// Offline: each message becomes `sms-<uuid>.txt` in the outbox directory,
/// so a developer reads verification codes from disk on a machine with no
/// network. Nothing about the message is logged.
#[derive(Debug, Clone)]
pub struct DevSms {
    outbox_dir: PathBuf,
}

impl DevSms {
    pub fn new(outbox_dir: impl Into<PathBuf>) -> Self {
        DevSms {
            outbox_dir: outbox_dir.into(),
        }
    }
}

#[async_trait]
impl SmsSender for DevSms {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn send(&self, to: &str, body: &str) -> Result<SentMessage, ProviderError> {
        validate_e164(to)?;
        validate_body(body)?;
        let content = format!("To: {to}\n\n{body}\n");
        write_outbox(&self.outbox_dir, "sms", "txt", &content).await
    }
}

/// Which SMS provider sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsProvider {
    /// Writes messages to `outbox_dir`; the default, needs nothing.
    #[default]
    Dev,
    /// Twilio's Messages API.
    Twilio,
}

/// The `sms` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSettings {
    /// `dev` (default) or `twilio`.
    pub provider: SmsProvider,
    /// Twilio's API root; changed only for tests and regional edges.
    pub base_url: String,
    /// Twilio Account SID (`AC…`); required for `twilio`.
    pub account_sid: Option<String>,
    /// Twilio Auth Token (or API key secret); required for `twilio`.
    pub auth_token: Option<SecretString>,
    /// The sender number, short code or alphanumeric id. Exactly one of
    /// `from` and `messaging_service_sid` is required for `twilio`.
    pub from: Option<String>,
    /// A Twilio Messaging Service SID (`MG…`), instead of `from`.
    pub messaging_service_sid: Option<String>,
    /// The whole request's timeout, in milliseconds (default 10 000).
    pub timeout_ms: u64,
    /// Where the `dev` provider writes messages (default `data/outbox`).
    pub outbox_dir: PathBuf,
}

impl Default for SmsSettings {
    fn default() -> Self {
        SmsSettings {
            provider: SmsProvider::Dev,
            base_url: TwilioSms::DEFAULT_BASE_URL.to_owned(),
            account_sid: None,
            auth_token: None,
            from: None,
            messaging_service_sid: None,
            timeout_ms: 10_000,
            outbox_dir: PathBuf::from("data/outbox"),
        }
    }
}

/// `Some` only when set to something other than blanks.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl SmsSettings {
    /// Every problem a start-up should refuse, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("sms.timeout_ms: must be more than 0".into());
        }
        match self.provider {
            SmsProvider::Dev => {
                if self.outbox_dir.as_os_str().is_empty() {
                    return Err("sms.outbox_dir: required when sms.provider = \"dev\"".into());
                }
            }
            SmsProvider::Twilio => {
                let required =
                    |name: &str| format!("sms.{name}: required when sms.provider = \"twilio\"");
                if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://"))
                {
                    return Err("sms.base_url: must be an http:// or https:// URL".into());
                }
                let sid = present(&self.account_sid).ok_or_else(|| required("account_sid"))?;
                if !sid.starts_with("AC") || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err("sms.account_sid: a Twilio Account SID starts with AC".into());
                }
                if self
                    .auth_token
                    .as_ref()
                    .is_none_or(|t| t.expose_secret().trim().is_empty())
                {
                    return Err(required("auth_token"));
                }
                match (present(&self.from), present(&self.messaging_service_sid)) {
                    (None, None) => {
                        return Err(
                            "sms.from: set sms.from or sms.messaging_service_sid when sms.provider = \"twilio\"".into(),
                        );
                    }
                    (Some(_), Some(_)) => {
                        return Err(
                            "sms.messaging_service_sid: set sms.from or sms.messaging_service_sid, not both".into(),
                        );
                    }
                    (None, Some(mg)) if !mg.starts_with("MG") => {
                        return Err(
                            "sms.messaging_service_sid: a Messaging Service SID starts with MG"
                                .into(),
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The configured sender, after [`Self::validate`].
    pub fn build(&self) -> Result<Arc<dyn SmsSender>, String> {
        self.validate()?;
        Ok(match self.provider {
            SmsProvider::Dev => Arc::new(DevSms::new(&self.outbox_dir)),
            SmsProvider::Twilio => {
                let sender = match (present(&self.from), present(&self.messaging_service_sid)) {
                    (Some(from), _) => TwilioSender::From(from.to_owned()),
                    (None, Some(mg)) => TwilioSender::MessagingService(mg.to_owned()),
                    (None, None) => return Err("sms.from: required".into()),
                };
                let (Some(sid), Some(token)) = (present(&self.account_sid), &self.auth_token)
                else {
                    return Err("sms.account_sid: required".into());
                };
                Arc::new(TwilioSms::new(
                    &self.base_url,
                    sid,
                    token.clone(),
                    sender,
                    Duration::from_millis(self.timeout_ms),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::message::test_support::TempDir;
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "token-very-secret";
    const TO: &str = "+15551234567";
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

    #[test]
    fn e164_numbers_are_checked() {
        for good in [
            "+15551234567",
            "+4915112345678",
            "+12345678",
            "+123456789012345",
        ] {
            assert_eq!(validate_e164(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "+",
            "15551234567",
            "+1234567",
            "+1234567890123456",
            "+0555123456",
            "+1 555 123 4567",
            "+1555123456７",
            "++15551234567",
        ] {
            let e = validate_e164(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_phone", "{bad}");
            assert!(matches!(e, ProviderError::Permanent { .. }));
            assert!(bad.len() < 4 || !e.to_string().contains(bad), "{e}");
        }
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

    #[tokio::test]
    async fn dev_sms_writes_the_message_to_the_outbox() {
        let dir = TempDir::new();
        let sms = DevSms::new(&dir.0);
        let sent = sms.send(TO, "Your code is 123456").await.unwrap();
        let files = dir.files();
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0].file_name().unwrap().to_str().unwrap(),
            format!("{}.txt", sent.provider_id)
        );
        assert!(sent.provider_id.starts_with("sms-"));
        assert_eq!(
            std::fs::read_to_string(&files[0]).unwrap(),
            "To: +15551234567\n\nYour code is 123456\n"
        );
        let e = sms.send("123", "x").await.unwrap_err();
        assert_eq!(e.code(), "invalid_phone");
        assert_eq!(dir.files().len(), 1);
    }

    fn settings(toml_like: serde_json::Value) -> Result<SmsSettings, serde_json::Error> {
        serde_json::from_value(toml_like)
    }

    #[test]
    fn sms_settings_default_to_the_dev_outbox() {
        let s = settings(serde_json::json!({})).unwrap();
        assert_eq!(s.provider, SmsProvider::Dev);
        assert_eq!(s.outbox_dir, PathBuf::from("data/outbox"));
        assert_eq!(s.base_url, "https://api.twilio.com");
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.build().unwrap().name(), "dev");
        assert!(settings(serde_json::json!({"provider": "carrier-pigeon"})).is_err());
        assert!(settings(serde_json::json!({"auth_tokne": "x"})).is_err());
    }

    #[test]
    fn sms_settings_name_what_twilio_is_missing() {
        let full = serde_json::json!({
            "provider": "twilio",
            "account_sid": SID,
            "auth_token": TOKEN,
            "from": "+15550000000",
        });
        let s = settings(full.clone()).unwrap();
        assert_eq!(s.build().unwrap().name(), "twilio");
        assert!(!format!("{s:?}").contains(TOKEN));

        let without = |key: &str| {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(key);
            settings(v).unwrap().validate().unwrap_err()
        };
        assert_eq!(
            without("account_sid"),
            "sms.account_sid: required when sms.provider = \"twilio\""
        );
        assert_eq!(
            without("auth_token"),
            "sms.auth_token: required when sms.provider = \"twilio\""
        );
        assert!(without("from").starts_with("sms.from: "));

        let with = |key: &str, value: serde_json::Value| {
            let mut v = full.clone();
            v.as_object_mut().unwrap().insert(key.into(), value);
            settings(v).unwrap().validate()
        };
        assert!(
            with("messaging_service_sid", "MG1".into())
                .unwrap_err()
                .starts_with("sms.messaging_service_sid: ")
        );
        assert!(
            with("account_sid", "nope".into())
                .unwrap_err()
                .starts_with("sms.account_sid: ")
        );
        assert!(
            with("timeout_ms", 0.into())
                .unwrap_err()
                .starts_with("sms.timeout_ms: ")
        );
        assert!(
            with("base_url", "ftp://x".into())
                .unwrap_err()
                .starts_with("sms.base_url: ")
        );
    }
}
