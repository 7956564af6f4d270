//! Mail through a Resend-style HTTP API: `POST {base}/emails` with a
//! Bearer key.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{EmailMessage, Mailer, SentMessage, recipient};
use crate::{ProviderError, http, message::redact_contacts};

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
        let mut request = self
            .client
            .post(format!("{}/emails", self.base_url))
            .bearer_auth(self.api_key.expose_secret());
        // Resend keeps a key 24 hours: a retry within them sends nothing new.
        if let Some(key) = &msg.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
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

#[cfg(test)]
mod tests {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::tests::{FROM, KEY, message};
    use super::*;

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
    async fn http_sends_the_idempotency_key_on_every_attempt() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "x"})))
            .mount(&server)
            .await;
        let mailer = http_mailer(&server.uri(), Duration::from_secs(5));
        let keyed = EmailMessage {
            idempotency_key: Some("0193a1d2-job".into()),
            ..message()
        };
        mailer.send(&keyed).await.unwrap();
        mailer.send(&keyed).await.unwrap();
        mailer.send(&message()).await.unwrap();
        let requests = server.received_requests().await.unwrap();
        let keys: Vec<Option<&str>> = requests
            .iter()
            .map(|r| {
                r.headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
            })
            .collect();
        assert_eq!(keys, [Some("0193a1d2-job"), Some("0193a1d2-job"), None]);
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
}
