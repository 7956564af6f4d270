//! Paddle Billing: checkout by creating a transaction (`POST /transactions`)
//! whose checkout URL the buyer opens, and notifications signed with
//! `Paddle-Signature`. Paddle sees the price, kiln's two references in
//! `custom_data`, and (when shared) the buyer's email, through its
//! customer entity; nothing else about the account.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{
    Checkout, CheckoutRequest, PaidOrder, PaymentEvent, Payments, References, WebhookRefusal,
    signature,
};
use crate::{ProviderError, http, message::redact_contacts};

#[derive(Debug, Clone)]
pub struct PaddlePayments {
    client: reqwest::Client,
    base_url: String,
    // SecretString: Debug prints [REDACTED].
    api_key: SecretString,
    webhook_secret: SecretString,
    tolerance: Duration,
}

/// Paddle's envelope: `{"data": …}`.
#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct Entity {
    id: String,
}

#[derive(Deserialize)]
struct Transaction {
    id: String,
    checkout: Option<TransactionCheckout>,
}

#[derive(Deserialize)]
struct TransactionCheckout {
    url: Option<String>,
}

/// Paddle's error body: `{"error":{"type","code","detail"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: PaddleError,
}

#[derive(Deserialize)]
struct PaddleError {
    code: Option<String>,
    detail: Option<String>,
}

/// A notification: `{"event_id","event_type","occurred_at","data"}`.
#[derive(Deserialize)]
struct Notification {
    event_id: String,
    event_type: String,
    occurred_at: DateTime<Utc>,
    data: serde_json::Value,
}

/// What kiln reads of a `transaction.completed`.
#[derive(Deserialize)]
struct Completed {
    id: String,
    custom_data: Option<serde_json::Value>,
    currency_code: String,
    details: Details,
}

#[derive(Deserialize)]
struct Details {
    totals: Totals,
}

/// Amounts are strings in the currency's minor unit.
#[derive(Deserialize)]
struct Totals {
    grand_total: Option<String>,
    total: String,
}

impl PaddlePayments {
    pub const DEFAULT_BASE_URL: &str = "https://api.paddle.com";

    pub fn new(
        base_url: &str,
        api_key: SecretString,
        webhook_secret: SecretString,
        tolerance: Duration,
        timeout: Duration,
    ) -> Self {
        PaddlePayments {
            client: http::client(timeout),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            webhook_secret,
            tolerance,
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Result<T, (reqwest::StatusCode, ProviderError)>, ProviderError> {
        let response = request
            .bearer_auth(self.api_key.expose_secret())
            .send()
            .await
            .map_err(|e| http::transport_error("paddle", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            return response
                .json::<Data<T>>()
                .await
                .map(|d| Ok(d.data))
                .map_err(|_| {
                    ProviderError::permanent(
                        "invalid_response",
                        format!(
                            "paddle answered {} with an unreadable body",
                            status.as_u16()
                        ),
                    )
                });
        }
        let error: Option<ErrorBody> = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (code, detail) = error.map_or((None, None), |e| (e.error.code, e.error.detail));
        Ok(Err((
            status,
            http::status_error(
                "paddle",
                status,
                &headers,
                code,
                detail.map(|d| redact_contacts(&d)),
            ),
        )))
    }

    /// The customer with this email: found, or created. Two checkouts
    /// racing to create it meet at Paddle's 409 and read it back.
    async fn customer(&self, email: &str) -> Result<String, ProviderError> {
        for _ in 0..2 {
            let found: Vec<Entity> = self
                .call(
                    self.client
                        .get(format!("{}/customers", self.base_url))
                        .query(&[("email", email)]),
                )
                .await?
                .map_err(|(_, e)| e)?;
            if let Some(customer) = found.into_iter().next() {
                return Ok(customer.id);
            }
            let created: Result<Entity, _> = self
                .call(
                    self.client
                        .post(format!("{}/customers", self.base_url))
                        .json(&json!({ "email": email })),
                )
                .await?;
            match created {
                Ok(customer) => return Ok(customer.id),
                Err((status, _)) if status == reqwest::StatusCode::CONFLICT => continue,
                Err((_, e)) => return Err(e),
            }
        }
        Err(ProviderError::transient(
            "customer_conflict",
            "paddle reported the customer as existing but did not list it",
        ))
    }
}

#[async_trait]
impl Payments for PaddlePayments {
    fn name(&self) -> &'static str {
        "paddle"
    }

    async fn checkout(&self, request: &CheckoutRequest<'_>) -> Result<Checkout, ProviderError> {
        let price_id = request.pack.price_id.as_deref().ok_or_else(|| {
            ProviderError::permanent("no_price", "the pack has no Paddle price_id")
        })?;
        let customer_id = match request.customer_email {
            Some(email) => Some(self.customer(email).await?),
            None => None,
        };
        let mut body = json!({
            "items": [{ "price_id": price_id, "quantity": 1 }],
            "custom_data": References {
                kiln_order: request.order,
                kiln_account: request.account,
            },
        });
        if let Some(id) = customer_id {
            body["customer_id"] = json!(id);
        }
        let transaction: Transaction = self
            .call(
                self.client
                    .post(format!("{}/transactions", self.base_url))
                    .json(&body),
            )
            .await?
            .map_err(|(_, e)| e)?;
        let url = transaction
            .checkout
            .and_then(|c| c.url)
            .ok_or_else(|| {
                ProviderError::permanent(
                    "no_checkout_url",
                    "paddle created the transaction without a checkout URL: set a default payment link in Paddle",
                )
            })?;
        Ok(Checkout {
            url,
            transaction_id: Some(transaction.id),
        })
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<PaymentEvent, WebhookRefusal> {
        signature::verify_paddle(
            self.webhook_secret.expose_secret().as_bytes(),
            headers,
            body,
            now,
            self.tolerance,
        )?;
        let n: Notification = serde_json::from_slice(body)
            .map_err(|e| WebhookRefusal::Malformed(format!("not a Paddle notification: {e}")))?;
        let paid = if n.event_type == "transaction.completed" {
            completed(n.data, n.occurred_at)?
        } else {
            None
        };
        Ok(PaymentEvent {
            event_id: n.event_id,
            event_type: n.event_type,
            paid,
        })
    }
}

/// The paid order a `transaction.completed` reports; `None` for a
/// transaction kiln did not open (no references in its custom data).
fn completed(
    data: serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Result<Option<PaidOrder>, WebhookRefusal> {
    let t: Completed = serde_json::from_value(data)
        .map_err(|e| WebhookRefusal::Malformed(format!("transaction.completed: {e}")))?;
    let Some(refs) = t
        .custom_data
        .and_then(|c| serde_json::from_value::<References>(c).ok())
    else {
        return Ok(None);
    };
    let total = t
        .details
        .totals
        .grand_total
        .unwrap_or(t.details.totals.total);
    let amount = total.parse::<i64>().map_err(|_| {
        WebhookRefusal::Malformed(format!("transaction.completed: a total of {total:?}"))
    })?;
    Ok(Some(PaidOrder {
        order: refs.kiln_order,
        account: refs.kiln_account,
        transaction_id: t.id,
        amount,
        currency: t.currency_code,
        paid_at: occurred_at,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kiln_jobs::{OrderId, UserId};
    use reqwest::header::{HeaderName, HeaderValue};
    use uuid::Uuid;
    use wiremock::matchers::{header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::payments::Pack;

    const SECRET: &str = "pdl_ntfset_test_secret";

    fn paddle(server: &MockServer) -> PaddlePayments {
        PaddlePayments::new(
            &server.uri(),
            SecretString::from("pdl_apikey_test"),
            SecretString::from(SECRET),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    }

    fn pack() -> Pack {
        Pack {
            credits: 100,
            amount: 500,
            currency: "USD".into(),
            price_id: Some("pri_01small".into()),
        }
    }

    fn ids() -> (OrderId, UserId) {
        (OrderId(Uuid::new_v4()), UserId(Uuid::new_v4()))
    }

    async fn transaction_mock(server: &MockServer) {
        Mock::given(method("POST"))
            .and(path("/transactions"))
            .and(header("authorization", "Bearer pdl_apikey_test"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "data": {"id": "txn_01", "status": "ready",
                         "checkout": {"url": "https://pay.example.com/?_ptxn=txn_01"}}
            })))
            .mount(server)
            .await;
    }

    fn bodies(requests: &[wiremock::Request], p: &str) -> Vec<serde_json::Value> {
        requests
            .iter()
            .filter(|r| r.url.path() == p && r.method.as_str() == "POST")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn checkout_sends_the_price_the_references_and_the_email_only() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/customers"))
            .and(query_param("email", "ada@example.com"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/customers"))
            .respond_with(
                ResponseTemplate::new(201).set_body_json(json!({"data": {"id": "ctm_01"}})),
            )
            .mount(&server)
            .await;
        transaction_mock(&server).await;
        let (order, account) = ids();
        let pack = pack();
        let checkout = paddle(&server)
            .checkout(&CheckoutRequest {
                order,
                account,
                pack: &pack,
                customer_email: Some("ada@example.com"),
            })
            .await
            .unwrap();
        assert_eq!(checkout.url, "https://pay.example.com/?_ptxn=txn_01");
        assert_eq!(checkout.transaction_id.as_deref(), Some("txn_01"));

        let requests = server.received_requests().await.unwrap();
        assert_eq!(
            bodies(&requests, "/customers"),
            vec![json!({"email": "ada@example.com"})]
        );
        assert_eq!(
            bodies(&requests, "/transactions"),
            vec![json!({
                "items": [{"price_id": "pri_01small", "quantity": 1}],
                "custom_data": {"kiln_order": order, "kiln_account": account},
                "customer_id": "ctm_01",
            })]
        );
    }

    #[tokio::test]
    async fn checkout_reuses_a_known_customer_and_sends_no_email_when_not_shared() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/customers"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"data": [{"id": "ctm_known"}]})),
            )
            .mount(&server)
            .await;
        transaction_mock(&server).await;
        let (order, account) = ids();
        let pack = pack();
        let payments = paddle(&server);
        let request = CheckoutRequest {
            order,
            account,
            pack: &pack,
            customer_email: Some("ada@example.com"),
        };
        payments.checkout(&request).await.unwrap();
        payments
            .checkout(&CheckoutRequest {
                customer_email: None,
                ..request
            })
            .await
            .unwrap();
        let requests = server.received_requests().await.unwrap();
        assert!(
            bodies(&requests, "/customers").is_empty(),
            "no customer created"
        );
        let sent = bodies(&requests, "/transactions");
        assert_eq!(sent[0]["customer_id"], "ctm_known");
        assert!(sent[1].get("customer_id").is_none());
    }

    #[tokio::test]
    async fn paddle_errors_keep_their_code_and_retry_decision() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/transactions"))
            .respond_with(ResponseTemplate::new(429).set_body_json(json!({
                "error": {"type": "request_error", "code": "too_many_requests",
                          "detail": "slow down ada@example.com"}
            })))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/transactions"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "error": {"type": "request_error", "code": "transaction_default_checkout_url_not_set",
                          "detail": "no default payment link"}
            })))
            .mount(&server)
            .await;
        let (order, account) = ids();
        let pack = pack();
        let request = CheckoutRequest {
            order,
            account,
            pack: &pack,
            customer_email: None,
        };
        let payments = paddle(&server);
        let busy = payments.checkout(&request).await.unwrap_err();
        assert!(matches!(busy, ProviderError::Transient { .. }), "{busy:?}");
        assert_eq!(busy.code(), "too_many_requests");
        assert!(!busy.to_string().contains("ada@"), "{busy}");
        let refused = payments.checkout(&request).await.unwrap_err();
        assert!(matches!(refused, ProviderError::Permanent { .. }));
        assert_eq!(refused.code(), "transaction_default_checkout_url_not_set");
    }

    fn signed(body: &[u8], ts: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("paddle-signature"),
            HeaderValue::from_str(&signature::sign_paddle(SECRET.as_bytes(), ts, body)).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn a_completed_transaction_reads_as_a_paid_order() {
        let server = MockServer::start().await;
        let (order, account) = ids();
        let body = json!({
            "event_id": "evt_01", "event_type": "transaction.completed",
            "occurred_at": "2026-12-01T10:00:00.123Z", "notification_id": "ntf_01",
            "data": {
                "id": "txn_01", "status": "completed", "currency_code": "EUR",
                "custom_data": {"kiln_order": order, "kiln_account": account},
                "customer_id": "ctm_01",
                "details": {"totals": {"subtotal": "450", "tax": "50", "total": "500",
                                       "grand_total": "480"}},
            },
        })
        .to_string();
        let now = Utc::now();
        let payments = paddle(&server);
        let event = payments
            .verify(
                &signed(body.as_bytes(), now.timestamp()),
                body.as_bytes(),
                now,
            )
            .unwrap();
        assert_eq!(event.event_id, "evt_01");
        let paid = event.paid.unwrap();
        assert_eq!((paid.order, paid.account), (order, account));
        assert_eq!(paid.transaction_id, "txn_01");
        assert_eq!((paid.amount, paid.currency.as_str()), (480, "EUR"));

        // Another product's transaction on the same Paddle account.
        let foreign = body.replace(&order.to_string(), "someone-else");
        let event = payments
            .verify(
                &signed(foreign.as_bytes(), now.timestamp()),
                foreign.as_bytes(),
                now,
            )
            .unwrap();
        assert_eq!(event.paid, None);
        // Signed by Paddle 6 seconds ago: stale under the default 5.
        assert_eq!(
            payments.verify(
                &signed(body.as_bytes(), now.timestamp() - 6),
                body.as_bytes(),
                now
            ),
            Err(WebhookRefusal::Stale)
        );
    }
}
