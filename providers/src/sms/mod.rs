//! Text messages: the [`SmsSender`] trait, the `[sms]` settings section
//! that picks one (`dev`, the offline outbox, the default; or `twilio`,
//! Twilio's Messages API), and both implementations. Verification codes
//! and short notices only; phone numbers and bodies are never logged or put
//! in error messages.

pub mod dev;
pub mod twilio;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ProviderError;

pub use crate::message::SentMessage;
pub use dev::DevSms;
pub use twilio::{TwilioSender, TwilioSms};

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

/// Which SMS provider sends (`sms.provider`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Writes messages to `outbox_dir`; the default, needs nothing.
    #[default]
    Dev,
    /// Twilio's Messages API.
    Twilio,
}

/// The `[sms]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSettings {
    /// `dev` (default) or `twilio`.
    pub provider: Provider,
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
            provider: Provider::Dev,
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
            Provider::Dev => {
                if self.outbox_dir.as_os_str().is_empty() {
                    return Err("sms.outbox_dir: required when sms.provider = \"dev\"".into());
                }
            }
            Provider::Twilio => {
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
            Provider::Dev => Arc::new(DevSms::new(&self.outbox_dir)),
            Provider::Twilio => {
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
    use super::*;

    pub(super) const SID: &str = "AC0123456789abcdef0123456789abcdef";
    pub(super) const TOKEN: &str = "token-very-secret";
    pub(super) const TO: &str = "+15551234567";

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

    fn settings(toml_like: serde_json::Value) -> Result<SmsSettings, serde_json::Error> {
        serde_json::from_value(toml_like)
    }

    #[test]
    fn sms_settings_default_to_the_dev_outbox() {
        let s = settings(serde_json::json!({})).unwrap();
        assert_eq!(s.provider, Provider::Dev);
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
