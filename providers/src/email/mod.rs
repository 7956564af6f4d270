//! Email: the [`Mailer`] trait, the `[email]` settings section that picks
//! one (`dev`, the offline outbox, the default; `smtp` through lettre; or
//! `http`, a Resend-style API), and the three implementations.
//! Transactional mail only; addresses and bodies are never logged or put
//! in errors.

pub mod dev;
pub mod http;
pub mod smtp;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::Address;
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ProviderError;

pub use crate::message::SentMessage;
pub use dev::DevMailer;
pub use http::HttpMailer;
pub use smtp::{SmtpMailer, SmtpTls};

/// One email to one recipient: plain text, optionally with an HTML
/// alternative.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailMessage {
    /// A bare address (`someone@example.com`).
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// The same on every attempt to send this one message (kiln uses the
    /// job's id), so a provider that deduplicates sends a retried mail once:
    /// a worker that died after the provider accepted the mail, before the
    /// job's outcome was written, repeats the send under the same key.
    pub idempotency_key: Option<String>,
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

/// Which email provider sends (`email.provider`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Writes messages to `outbox_dir`; the default, needs nothing.
    #[default]
    Dev,
    /// SMTP submission (`smtp_*` settings).
    Smtp,
    /// A Resend-style HTTP API (`http_*` settings).
    Http,
}

/// The `[email]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// `dev` (default), `smtp` or `http`.
    pub provider: Provider,
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
    /// The operators' mailbox, told when a scheduled export (the monthly
    /// accounting CSV, the daily access-log archive) is written; unset:
    /// nobody is emailed, and the files are listed at `GET /admin/v1/exports`.
    pub operator_address: Option<String>,
}

impl Default for EmailSettings {
    fn default() -> Self {
        EmailSettings {
            provider: Provider::Dev,
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
            operator_address: None,
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
            Provider::Dev => "dev",
            Provider::Smtp => "smtp",
            Provider::Http => "http",
        };
        let required =
            |name: &str| format!("email.{name}: required when email.provider = \"{provider}\"");
        if let Some(from) = present(&self.from) {
            from.parse::<Mailbox>()
                .map_err(|_| "email.from: not an address or `Name <address>`".to_owned())?;
        }
        match self.provider {
            Provider::Dev => {
                if self.outbox_dir.as_os_str().is_empty() {
                    return Err(required("outbox_dir"));
                }
            }
            Provider::Smtp => {
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
            Provider::Http => {
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
            Provider::Dev => Arc::new(DevMailer::new(&self.outbox_dir, from.unwrap_or(DEV_FROM))),
            Provider::Smtp => {
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
            Provider::Http => Arc::new(HttpMailer::new(
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
    use super::*;

    pub(super) const KEY: &str = "re_very_secret";
    pub(super) const FROM: &str = "Kiln <noreply@kiln.example>";

    pub(super) fn message() -> EmailMessage {
        EmailMessage {
            to: "ada@example.com".into(),
            subject: "Your Kiln verification code".into(),
            text: "Your code is 123456.".into(),
            html: Some("<p>Your code is <b>123456</b>.</p>".into()),
            idempotency_key: None,
        }
    }

    #[test]
    fn email_debug_hides_the_address_and_bodies() {
        let text = format!("{:?}", message());
        assert_eq!(
            text,
            "EmailMessage { to: <redacted>, subject: <27 chars>, text: <20 chars>, html: <34 chars> }"
        );
    }

    fn settings(value: serde_json::Value) -> Result<EmailSettings, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn email_settings_default_to_the_dev_outbox() {
        let s = settings(serde_json::json!({})).unwrap();
        assert_eq!(s.provider, Provider::Dev);
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
