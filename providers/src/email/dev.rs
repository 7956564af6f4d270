//! The offline mailer of the default settings: messages go to files in an
//! outbox directory.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{EmailMessage, Mailer, SentMessage, recipient};
use crate::{ProviderError, message::write_outbox};

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

#[cfg(test)]
mod tests {
    use super::super::tests::{FROM, message};
    use super::*;
    use crate::message::test_support::TempDir;

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
}
