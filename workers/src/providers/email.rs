//! Email: a Resend-style HTTP API, SMTP through lettre, and an offline
//! outbox for development. Transactional mail only (PRIVACY.md P2, P14,
//! P16, P18); addresses and bodies are never logged or put in errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ProviderError;
use super::http;
use super::message::{redact_contacts, write_outbox};

pub use super::message::SentMessage;

/// One email to one recipient: plain text, optionally with an HTML
/// alternative.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailMessage {
    /// A bare address (`someone@example.com`).
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Sizes only: the address, the subject (it may carry a code) and the
/// bodies are personal data.
impl fmt::Debug for EmailMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars = |s: &str| format!("<{} chars>", s.chars().count());
        f.debug_struct("EmailMessage")
            .field("to", &format_args!("<redacted>"))
            .field("subject", &format_args!("{}", chars(&self.subject)))
            .field("text", &format_args!("{}", chars(&self.text)))
            .field(
                "html",
                &format_args!("{}", self.html.as_deref().map_or("None".into(), chars)),
            )
            .finish()
    }
}

/// Sends one email.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Recorded with each message: which provider sent it.
    fn name(&self) -> &'static str;
    /// A malformed recipient is a permanent `invalid_email` error before
    /// anything is sent.
    async fn send(&self, msg: &EmailMessage) -> Result<SentMessage, ProviderError>;
}

/// The recipient as an address, or `invalid_email` (without repeating it).
fn recipient(msg: &EmailMessage) -> Result<Address, ProviderError> {
    msg.to.trim().parse::<Address>().map_err(|_| {
        ProviderError::permanent("invalid_email", "the recipient is not an email address")
    })
}

/// A Resend-style mail API: `POST {base}/emails` with a Bearer key.
#[derive(Debug, Clone)]
pub struct HttpMailer {
    client: reqwest::Client,
    base_url: String,
    // SecretString: Debug prints [REDACTED].
    api_key: SecretString,
    from: String,
}

impl HttpMailer {
    pub const DEFAULT_BASE_URL: &str = "https://api.resend.com";

    pub fn new(
        base_url: &str,
        api_key: SecretString,
        from: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        HttpMailer {
            client: http::client(timeout),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            from: from.into(),
        }
    }
}

#[derive(serde::Serialize)]
struct SendEmail<'a> {
    from: &'a str,
    to: [&'a str; 1],
    subject: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
}

#[derive(Deserialize)]
struct Sent {
    id: String,
}

/// The API's error body: `{"statusCode","name","message"}`.
#[derive(Deserialize)]
struct ApiError {
    name: Option<String>,
    message: Option<String>,
}

/// Whether a 422 is about the recipient (`invalid_to_address`, or a
/// validation error naming the `to` field) rather than the rest.
fn concerns_recipient(name: &str, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    name.contains("to_address")
        || ["`to`", "'to'", "\"to\"", "to field", "recipient"]
            .iter()
            .any(|needle| message.contains(needle))
}

#[async_trait]
impl Mailer for HttpMailer {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn send(&self, msg: &EmailMessage) -> Result<SentMessage, ProviderError> {
        let to = recipient(msg)?;
        let body = SendEmail {
            from: &self.from,
            to: [to.as_ref()],
            subject: &msg.subject,
            text: &msg.text,
            html: msg.html.as_deref(),
        };
        let response = self
            .client
            .post(format!("{}/emails", self.base_url))
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport_error("mail API", &e))?;

        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            return match response.json::<Sent>().await {
                Ok(sent) => Ok(SentMessage {
                    provider_id: sent.id,
                }),
                // Accepted but unreadable: retrying could send the mail twice.
                Err(_) => Err(ProviderError::permanent(
                    "invalid_response",
                    format!(
                        "mail API answered {} with an unreadable body; not retried, the mail may have been sent",
                        status.as_u16()
                    ),
                )),
            };
        }
        let error: Option<ApiError> = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let name = error
            .as_ref()
            .and_then(|e| e.name.clone())
            .unwrap_or_default();
        let message = error.and_then(|e| e.message).map(|m| redact_contacts(&m));
        let detail = match (name.is_empty(), &message) {
            (false, Some(m)) => Some(format!("{name}: {m}")),
            (false, None) => Some(name.clone()),
            (true, m) => m.clone(),
        };
        if status.as_u16() == 422 {
            let code = if concerns_recipient(&name, message.as_deref().unwrap_or_default()) {
                "invalid_email"
            } else {
                "rejected"
            };
            return Err(ProviderError::permanent(
                code,
                format!(
                    "mail API answered 422: {}",
                    detail.as_deref().unwrap_or("(no message)")
                ),
            ));
        }
        Err(http::status_error(
            "mail API", status, &headers, None, detail,
        ))
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connect, then STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption at all: only for a local test server (port 25).
    None,
}

impl SmtpTls {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// SMTP submission through lettre. Opens a connection per message (no
/// pool): transactional mail is a trickle, and a fresh connection never
/// fails on a server-closed idle one.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
    port: u16,
    tls: SmtpTls,
}

/// Where it connects; never the credentials.
impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// `from` is a mailbox (`Kiln <noreply@example.com>` or a bare
    /// address); `credentials` are a username and password.
    pub fn new(
        host: &str,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, SecretString)>,
        from: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("the from address is not a mailbox: {e}"))?;
        let builder = match tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host,
            )),
        }
        .map_err(|e| format!("SMTP TLS setup failed: {e}"))?;
        let mut builder = builder.port(port).timeout(Some(timeout));
        if let Some((username, password)) = credentials {
            builder = builder.credentials(Credentials::new(
                username,
                password.expose_secret().to_owned(),
            ));
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            from,
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// The retry decision from an SMTP failure: 5xx replies are permanent
/// (mailbox errors 550/553 as `invalid_email`, auth 530/534/535 as
/// `unauthorized`), 4xx replies, timeouts, TLS and network failures are
/// transient, client-side misconfiguration (no STARTTLS offered, no usable
/// auth mechanism) is permanent.
fn smtp_error(e: &lettre::transport::smtp::Error) -> ProviderError {
    let detail = redact_contacts(&e.to_string());
    if let Some(code) = e.status() {
        let number = code.to_string();
        let message = format!("smtp answered {number}: {detail}");
        return if e.is_permanent() {
            let kiln_code = match number.as_str() {
                "550" | "553" => "invalid_email",
                "530" | "534" | "535" => "unauthorized",
                _ => "rejected",
            };
            ProviderError::permanent(kiln_code, message)
        } else {
            ProviderError::transient("temporary_failure", message)
        };
    }
    if e.is_timeout() {
        ProviderError::transient("timeout", "smtp did not answer in time")
    } else if e.is_client() {
        ProviderError::permanent("smtp_misconfigured", format!("smtp: {detail}"))
    } else if e.is_tls() {
        ProviderError::transient("tls_failed", format!("smtp: {detail}"))
    } else {
        ProviderError::transient(
            "connection_failed",
            format!("smtp could not be reached: {detail}"),
        )
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, msg: &EmailMessage) -> Result<SentMessage, ProviderError> {
        let to = recipient(msg)?;
        // Our own Message-ID, so the provider id is known before sending
        // and matches what bounces quote.
        let message_id = format!("<{}@{}>", uuid::Uuid::now_v7(), self.from.email.domain());
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(msg.subject.as_str())
            .message_id(Some(message_id.clone()));
        let built = match &msg.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                msg.text.clone(),
                html.clone(),
            )),
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(msg.text.clone()),
        }
        .map_err(|e| {
            ProviderError::permanent("invalid_message", format!("building the email failed: {e}"))
        })?;
        self.transport
            .send(built)
            .await
            .map_err(|e| smtp_error(&e))?;
        Ok(SentMessage {
            provider_id: message_id,
        })
    }
}

/// Offline: each email becomes `email-<uuid>.eml` (headers, a blank line,
/// the text, then the HTML if any) in the outbox directory. Nothing about
/// the message is logged.
#[derive(Debug, Clone)]
pub struct DevMailer {
    outbox_dir: PathBuf,
    from: String,
}

impl DevMailer {
    pub fn new(outbox_dir: impl Into<PathBuf>, from: impl Into<String>) -> Self {
        DevMailer {
            outbox_dir: outbox_dir.into(),
            from: from.into(),
        }
    }
}

#[async_trait]
impl Mailer for DevMailer {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn send(&self, msg: &EmailMessage) -> Result<SentMessage, ProviderError> {
        let to = recipient(msg)?;
        let mut content = format!(
            "From: {}\nTo: {to}\nSubject: {}\nContent-Type: text/plain; charset=utf-8\n\n{}\n",
            self.from, msg.subject, msg.text
        );
        if let Some(html) = &msg.html {
            content.push_str("\n--- text/html ---\n");
            content.push_str(html);
            content.push('\n');
        }
        write_outbox(&self.outbox_dir, "email", "eml", &content).await
    }
}

/// Which email provider sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailProvider {
    /// Writes messages to `outbox_dir`; the default, needs nothing.
    #[default]
    Dev,
    /// SMTP submission (`smtp_*` settings).
    Smtp,
    /// A Resend-style HTTP API (`http_*` settings).
    Http,
}

/// The `email` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// `dev` (default), `smtp` or `http`.
    pub provider: EmailProvider,
    /// The product's name in every notice, email and SMS.
    pub product_name: String,
    /// The sender mailbox, `Kiln <noreply@example.com>` or a bare address;
    /// required for `smtp` and `http` (dev uses `kiln <noreply@localhost>`).
    pub from: Option<String>,
    /// The SMTP server; required for `smtp`.
    pub smtp_host: Option<String>,
    /// Defaults by `smtp_tls`: 587 (starttls), 465 (tls), 25 (none).
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls`, or `none` (a local test server only;
    /// refused with credentials, which would cross the network in clear).
    pub smtp_tls: SmtpTls,
    /// SMTP AUTH user; set together with `smtp_password`.
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    /// The mail API's root (default `https://api.resend.com`).
    pub http_base_url: String,
    /// The mail API's key; required for `http`.
    pub http_api_key: Option<SecretString>,
    /// A request's (or SMTP command's) timeout, in milliseconds (default
    /// 10 000).
    pub timeout_ms: u64,
    /// Where the `dev` provider writes messages (default `data/outbox`).
    pub outbox_dir: PathBuf,
}

impl Default for EmailSettings {
    fn default() -> Self {
        EmailSettings {
            provider: EmailProvider::Dev,
            product_name: "kiln".to_owned(),
            from: None,
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
            http_base_url: HttpMailer::DEFAULT_BASE_URL.to_owned(),
            http_api_key: None,
            timeout_ms: 10_000,
            outbox_dir: PathBuf::from("data/outbox"),
        }
    }
}

/// The sender of the offline `dev` mailer when `email.from` is unset.
pub const DEV_FROM: &str = "kiln <noreply@localhost>";

/// `Some` only when set to something other than blanks.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn secret_present(value: &Option<SecretString>) -> Option<&SecretString> {
    value
        .as_ref()
        .filter(|s| !s.expose_secret().trim().is_empty())
}

impl EmailSettings {
    /// Every problem a start-up should refuse, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("email.timeout_ms: must be more than 0".into());
        }
        let provider = match self.provider {
            EmailProvider::Dev => "dev",
            EmailProvider::Smtp => "smtp",
            EmailProvider::Http => "http",
        };
        let required =
            |name: &str| format!("email.{name}: required when email.provider = \"{provider}\"");
        if let Some(from) = present(&self.from) {
            from.parse::<Mailbox>()
                .map_err(|_| "email.from: not an address or `Name <address>`".to_owned())?;
        }
        match self.provider {
            EmailProvider::Dev => {
                if self.outbox_dir.as_os_str().is_empty() {
                    return Err(required("outbox_dir"));
                }
            }
            EmailProvider::Smtp => {
                present(&self.from).ok_or_else(|| required("from"))?;
                present(&self.smtp_host).ok_or_else(|| required("smtp_host"))?;
                if self.smtp_port == Some(0) {
                    return Err("email.smtp_port: must be 1 to 65535".into());
                }
                match (
                    present(&self.smtp_username),
                    secret_present(&self.smtp_password),
                ) {
                    (Some(_), None) => {
                        return Err("email.smtp_password: required with email.smtp_username".into());
                    }
                    (None, Some(_)) => {
                        return Err("email.smtp_username: required with email.smtp_password".into());
                    }
                    (Some(_), Some(_)) if self.smtp_tls == SmtpTls::None => {
                        return Err(
                            "email.smtp_tls: \"none\" would send the SMTP password in clear; use starttls or tls".into(),
                        );
                    }
                    _ => {}
                }
            }
            EmailProvider::Http => {
                present(&self.from).ok_or_else(|| required("from"))?;
                if !(self.http_base_url.starts_with("https://")
                    || self.http_base_url.starts_with("http://"))
                {
                    return Err("email.http_base_url: must be an http:// or https:// URL".into());
                }
                secret_present(&self.http_api_key).ok_or_else(|| required("http_api_key"))?;
            }
        }
        Ok(())
    }

    /// The configured mailer, after [`Self::validate`].
    pub fn build(&self) -> Result<Arc<dyn Mailer>, String> {
        self.validate()?;
        let timeout = Duration::from_millis(self.timeout_ms);
        let from = present(&self.from);
        Ok(match self.provider {
            EmailProvider::Dev => {
                Arc::new(DevMailer::new(&self.outbox_dir, from.unwrap_or(DEV_FROM)))
            }
            EmailProvider::Smtp => {
                let host = present(&self.smtp_host).ok_or("email.smtp_host: required")?;
                let credentials = match (
                    present(&self.smtp_username),
                    secret_present(&self.smtp_password),
                ) {
                    (Some(user), Some(password)) => Some((user.to_owned(), password.clone())),
                    _ => None,
                };
                Arc::new(
                    SmtpMailer::new(
                        host,
                        self.smtp_port.unwrap_or(self.smtp_tls.default_port()),
                        self.smtp_tls,
                        credentials,
                        from.ok_or("email.from: required")?,
                        timeout,
                    )
                    .map_err(|e| format!("email.smtp_host: {e}"))?,
                )
            }
            EmailProvider::Http => Arc::new(HttpMailer::new(
                &self.http_base_url,
                secret_present(&self.http_api_key)
                    .ok_or("email.http_api_key: required")?
                    .clone(),
                from.ok_or("email.from: required")?,
                timeout,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::message::test_support::TempDir;
    use super::*;

    const KEY: &str = "re_very_secret";
    const FROM: &str = "Kiln <noreply@kiln.example>";

    fn message() -> EmailMessage {
        EmailMessage {
            to: "ada@example.com".into(),
            subject: "Your Kiln verification code".into(),
            text: "Your code is 123456.".into(),
            html: Some("<p>Your code is <b>123456</b>.</p>".into()),
        }
    }

    fn http_mailer(base: &str, timeout: Duration) -> HttpMailer {
        HttpMailer::new(base, SecretString::from(KEY), FROM, timeout)
    }

    async fn answer(response: ResponseTemplate) -> Result<SentMessage, ProviderError> {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/emails"))
            .respond_with(response)
            .expect(1)
            .mount(&server)
            .await;
        http_mailer(&server.uri(), Duration::from_secs(5))
            .send(&message())
            .await
    }

    fn api_error(status: u16, name: &str, message: &str) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_json(serde_json::json!({
            "statusCode": status,
            "name": name,
            "message": message,
        }))
    }

    #[test]
    fn email_debug_hides_the_address_and_bodies() {
        let text = format!("{:?}", message());
        assert_eq!(
            text,
            "EmailMessage { to: <redacted>, subject: <27 chars>, text: <20 chars>, html: <34 chars> }"
        );
    }

    #[tokio::test]
    async fn http_success_sends_the_exact_request() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/emails"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(header("content-type", "application/json"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    serde_json::json!({"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}),
                ),
            )
            .expect(1)
            .mount(&server)
            .await;
        let sent = http_mailer(&format!("{}/", server.uri()), Duration::from_secs(5))
            .send(&message())
            .await
            .unwrap();
        assert_eq!(sent.provider_id, "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794");
        let requests = server.received_requests().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "from": FROM,
                "to": ["ada@example.com"],
                "subject": "Your Kiln verification code",
                "text": "Your code is 123456.",
                "html": "<p>Your code is <b>123456</b>.</p>",
            })
        );
    }

    #[tokio::test]
    async fn http_text_only_mail_has_no_html_field() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "x"})))
            .mount(&server)
            .await;
        let msg = EmailMessage {
            html: None,
            ..message()
        };
        http_mailer(&server.uri(), Duration::from_secs(5))
            .send(&msg)
            .await
            .unwrap();
        let requests = server.received_requests().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert!(body.get("html").is_none(), "{body}");
    }

    #[tokio::test]
    async fn http_rate_limit_is_transient_with_retry_after() {
        let e = answer(
            api_error(429, "rate_limit_exceeded", "Too many requests")
                .insert_header("retry-after", "3"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e,
            ProviderError::Transient {
                code: "rate_limited".into(),
                message: "mail API answered 429: rate_limit_exceeded: Too many requests".into(),
                retry_after: Some(Duration::from_secs(3)),
            }
        );
    }

    #[tokio::test]
    async fn http_503_is_transient() {
        let e = answer(ResponseTemplate::new(503)).await.unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "server_error");
    }

    #[tokio::test]
    async fn http_422_about_the_recipient_is_invalid_email() {
        let e = answer(api_error(
            422,
            "validation_error",
            "Invalid `to` field. ada@example.com must follow the `email@example.com` format.",
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
        assert_eq!(e.code(), "invalid_email");
        assert!(!e.to_string().contains("ada@example.com"), "{e}");
    }

    #[tokio::test]
    async fn http_other_422s_are_rejected() {
        let e = answer(api_error(
            422,
            "invalid_from_address",
            "Invalid `from` field.",
        ))
        .await
        .unwrap_err();
        assert_eq!(
            e,
            ProviderError::permanent(
                "rejected",
                "mail API answered 422: invalid_from_address: Invalid `from` field."
            )
        );
    }

    #[tokio::test]
    async fn http_auth_failures_are_permanent() {
        for (status, code) in [(401, "unauthorized"), (403, "forbidden")] {
            let e = answer(api_error(status, "invalid_api_key", "API key is invalid"))
                .await
                .unwrap_err();
            assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
            assert_eq!(e.code(), code);
            assert!(!e.to_string().contains(KEY));
        }
    }

    #[tokio::test]
    async fn http_timeout_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"id": "x"}))
                    .set_delay(Duration::from_secs(2)),
            )
            .mount(&server)
            .await;
        let e = http_mailer(&server.uri(), Duration::from_millis(200))
            .send(&message())
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ProviderError::transient("timeout", "mail API did not answer in time")
        );
    }

    #[tokio::test]
    async fn http_dropped_connection_is_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let e = http_mailer(&format!("http://{addr}"), Duration::from_secs(5))
            .send(&message())
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "connection_failed");
    }

    #[tokio::test]
    async fn bad_recipients_are_refused_before_sending() {
        let server = MockServer::start().await;
        for to in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a b@example.com",
            "ada@example.com, eve@example.com",
        ] {
            let msg = EmailMessage {
                to: to.into(),
                ..message()
            };
            let e = http_mailer(&server.uri(), Duration::from_secs(5))
                .send(&msg)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "invalid_email", "{to:?}");
            assert!(matches!(e, ProviderError::Permanent { .. }));
        }
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    /// A fake SMTP server: answers `rcpt_reply` to RCPT TO and records
    /// every DATA payload.
    struct FakeSmtp {
        port: u16,
        received: Arc<Mutex<Vec<String>>>,
    }

    async fn fake_smtp(rcpt_reply: &'static str) -> FakeSmtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let command = line.to_ascii_uppercase();
                        let reply = if command.starts_with("EHLO") {
                            "250-fake.test\r\n250 8BITMIME\r\n".to_owned()
                        } else if command.starts_with("RCPT TO") {
                            format!("{rcpt_reply}\r\n")
                        } else if command.starts_with("DATA") {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            store.lock().unwrap().push(data);
                            "250 2.0.0 Ok: queued as ABC\r\n".to_owned()
                        } else if command.starts_with("QUIT") {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        } else {
                            "250 ok\r\n".to_owned()
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        FakeSmtp { port, received }
    }

    fn smtp_mailer(port: u16) -> SmtpMailer {
        SmtpMailer::new(
            "127.0.0.1",
            port,
            SmtpTls::None,
            None,
            FROM,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn smtp_delivers_the_message() {
        let server = fake_smtp("250 ok").await;
        let sent = smtp_mailer(server.port).send(&message()).await.unwrap();
        assert!(
            sent.provider_id.ends_with("@kiln.example>"),
            "{}",
            sent.provider_id
        );
        let received = server.received.lock().unwrap().clone();
        assert_eq!(received.len(), 1);
        let data = &received[0];
        assert!(
            data.contains("Subject: Your Kiln verification code\n"),
            "{data}"
        );
        assert!(data.contains("To: ada@example.com\n"), "{data}");
        assert!(
            data.contains(&format!("Message-ID: {}\n", sent.provider_id)),
            "{data}"
        );
        assert!(data.contains("Your code is 123456."), "{data}");
        assert!(data.contains("multipart/alternative"), "{data}");
    }

    #[tokio::test]
    async fn smtp_550_on_rcpt_is_a_permanent_invalid_email() {
        let server = fake_smtp("550 5.1.1 <ada@example.com>: Recipient address rejected").await;
        let e = smtp_mailer(server.port).send(&message()).await.unwrap_err();
        assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
        assert_eq!(e.code(), "invalid_email");
        assert!(e.to_string().contains("550"), "{e}");
        assert!(!e.to_string().contains("ada@example.com"), "{e}");
        assert!(server.received.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn smtp_other_5xx_is_rejected() {
        let server = fake_smtp("554 5.7.1 Relay access denied").await;
        let e = smtp_mailer(server.port).send(&message()).await.unwrap_err();
        assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
        assert_eq!(e.code(), "rejected");
    }

    #[tokio::test]
    async fn smtp_421_is_transient() {
        let server = fake_smtp("421 4.7.0 Try again later").await;
        let e = smtp_mailer(server.port).send(&message()).await.unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "temporary_failure");
        assert!(e.to_string().contains("421"), "{e}");
    }

    #[tokio::test]
    async fn smtp_unreachable_server_is_transient() {
        // Bound then closed: nothing listens on the port.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let e = smtp_mailer(port).send(&message()).await.unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert_eq!(e.code(), "connection_failed");
    }

    #[test]
    fn smtp_debug_shows_no_credentials() {
        let mailer = SmtpMailer::new(
            "smtp.example.com",
            587,
            SmtpTls::Starttls,
            Some(("user".into(), SecretString::from("hunter2"))),
            FROM,
            Duration::from_secs(5),
        )
        .unwrap();
        let text = format!("{mailer:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("smtp.example.com"), "{text}");
    }

    #[tokio::test]
    async fn dev_mailer_writes_the_message_to_the_outbox() {
        let dir = TempDir::new();
        let mailer = DevMailer::new(&dir.0, FROM);
        let sent = mailer.send(&message()).await.unwrap();
        let files = dir.files();
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0].file_name().unwrap().to_str().unwrap(),
            format!("{}.eml", sent.provider_id)
        );
        assert_eq!(
            std::fs::read_to_string(&files[0]).unwrap(),
            "From: Kiln <noreply@kiln.example>\nTo: ada@example.com\n\
             Subject: Your Kiln verification code\n\
             Content-Type: text/plain; charset=utf-8\n\n\
             Your code is 123456.\n\n--- text/html ---\n\
             <p>Your code is <b>123456</b>.</p>\n"
        );
    }

    fn settings(value: serde_json::Value) -> Result<EmailSettings, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn email_settings_default_to_the_dev_outbox() {
        let s = settings(serde_json::json!({})).unwrap();
        assert_eq!(s.provider, EmailProvider::Dev);
        assert_eq!(s.outbox_dir, PathBuf::from("data/outbox"));
        assert_eq!(s.smtp_tls, SmtpTls::Starttls);
        assert_eq!(s.build().unwrap().name(), "dev");
        assert!(settings(serde_json::json!({"provider": "fax"})).is_err());
        assert!(settings(serde_json::json!({"smtp_tls": "ssl"})).is_err());
        assert!(settings(serde_json::json!({"smtp_hots": "x"})).is_err());
    }

    #[test]
    fn email_settings_name_what_smtp_and_http_miss() {
        let smtp = serde_json::json!({
            "provider": "smtp",
            "from": FROM,
            "smtp_host": "smtp.example.com",
            "smtp_username": "user",
            "smtp_password": "hunter2",
        });
        let s = settings(smtp.clone()).unwrap();
        assert_eq!(s.build().unwrap().name(), "smtp");
        assert!(!format!("{s:?}").contains("hunter2"));
        let edit = |base: &serde_json::Value, key: &str, value: Option<serde_json::Value>| {
            let mut v = base.clone();
            match value {
                Some(value) => v.as_object_mut().unwrap().insert(key.into(), value),
                None => v.as_object_mut().unwrap().remove(key),
            };
            settings(v).unwrap().validate()
        };
        assert_eq!(
            edit(&smtp, "smtp_host", None).unwrap_err(),
            "email.smtp_host: required when email.provider = \"smtp\""
        );
        assert_eq!(
            edit(&smtp, "from", None).unwrap_err(),
            "email.from: required when email.provider = \"smtp\""
        );
        assert!(
            edit(&smtp, "smtp_password", None)
                .unwrap_err()
                .starts_with("email.smtp_password: ")
        );
        assert!(
            edit(&smtp, "smtp_tls", Some("none".into()))
                .unwrap_err()
                .starts_with("email.smtp_tls: ")
        );
        assert!(
            edit(&smtp, "from", Some("not an address".into()))
                .unwrap_err()
                .starts_with("email.from: ")
        );

        let http = serde_json::json!({
            "provider": "http",
            "from": FROM,
            "http_api_key": KEY,
        });
        let s = settings(http.clone()).unwrap();
        assert_eq!(s.build().unwrap().name(), "http");
        assert!(!format!("{s:?}").contains(KEY));
        assert_eq!(
            edit(&http, "http_api_key", None).unwrap_err(),
            "email.http_api_key: required when email.provider = \"http\""
        );
        assert!(
            edit(&http, "http_base_url", Some("api.resend.com".into()))
                .unwrap_err()
                .starts_with("email.http_base_url: ")
        );
        assert!(
            edit(&http, "timeout_ms", Some(0.into()))
                .unwrap_err()
                .starts_with("email.timeout_ms: ")
        );
    }
}
