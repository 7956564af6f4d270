//! The offline SMS sender of the default settings: messages go to files in
//! an outbox directory.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{SentMessage, SmsSender, validate_body, validate_e164};
use crate::{ProviderError, message::write_outbox};

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

#[cfg(test)]
mod tests {
    use super::super::tests::TO;
    use super::*;
    use crate::message::test_support::TempDir;

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
}
