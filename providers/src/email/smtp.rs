//! SMTP submission through lettre.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{EmailMessage, Mailer, SentMessage, recipient};
use crate::{ProviderError, message::redact_contacts};

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::super::tests::{FROM, message};
    use super::*;

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
}
