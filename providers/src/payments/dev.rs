//! The dev merchant, for the embedded default and tests: its checkout is a
//! page kiln serves itself (`/v1/dev/checkout/{order}`), and paying there
//! sends kiln a Standard Webhooks notification shaped like Polar's
//! `order.paid`, signed under a secret kept in `payments.dev_secret_file`.
//! It takes no money. The notification goes through the same receiver
//! (`POST /v1/webhooks/payments`) and the same checks as a real merchant's,
//! which is also what reads Polar's and Dodo Payments' notifications.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    Checkout, CheckoutRequest, Pack, PaidOrder, PaymentEvent, Payments, References, WebhookRefusal,
    signature,
};
use crate::ProviderError;
use kiln_jobs::{OrderId, UserId};

pub struct DevPayments {
    client: reqwest::Client,
    base_url: String,
    secret: Vec<u8>,
    tolerance: Duration,
}

/// Never prints the secret.
impl std::fmt::Debug for DevPayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPayments")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl DevPayments {
    pub fn new(base_url: &str, secret: Vec<u8>, tolerance: Duration) -> Self {
        DevPayments {
            client: crate::http::client(Duration::from_secs(10)),
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret,
            tolerance,
        }
    }

    /// The checkout page of an order, under the API's root.
    pub fn checkout_path(order: OrderId) -> String {
        format!("/v1/dev/checkout/{order}")
    }

    /// Where the payment notification goes.
    pub fn webhook_url(&self) -> String {
        format!("{}/v1/webhooks/payments", self.base_url)
    }

    /// The signed notification that pays an order: its three Standard
    /// Webhooks headers and its body.
    pub fn payment_notification(
        &self,
        order: OrderId,
        account: UserId,
        pack: &Pack,
        now: DateTime<Utc>,
    ) -> ([(&'static str, String); 3], Vec<u8>) {
        let body = json!({
            "type": "order.paid",
            "timestamp": now,
            "data": {
                "id": format!("dev_{}", Uuid::new_v4().simple()),
                "metadata": References { kiln_order: order, kiln_account: account },
                "total_amount": pack.amount,
                "currency": pack.currency.to_lowercase(),
                "created_at": now,
            },
        });
        // Serializing a json! value cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let id = format!("msg_{}", Uuid::new_v4().simple());
        let headers = signature::sign_standard(&self.secret, &id, now.timestamp(), &body);
        (headers, body)
    }
}

impl DevPayments {
    /// Pays an order as a merchant would: posts its signed notification to
    /// [`DevPayments::webhook_url`] and returns the receiver's status.
    pub async fn pay(
        &self,
        order: OrderId,
        account: UserId,
        pack: &Pack,
    ) -> Result<reqwest::StatusCode, ProviderError> {
        let (headers, body) = self.payment_notification(order, account, pack, Utc::now());
        let mut request = self
            .client
            .post(self.webhook_url())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| crate::http::transport_error("kiln", &e))?;
        Ok(answer.status())
    }
}

/// A Standard Webhooks notification: `{"type","timestamp","data"}`.
#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
}

/// A paid order as Polar (`order.paid`: `id`) and Dodo Payments
/// (`payment.succeeded`: `payment_id`) describe it.
#[derive(Deserialize)]
struct Paid {
    #[serde(alias = "payment_id")]
    id: String,
    metadata: Option<serde_json::Value>,
    total_amount: i64,
    currency: String,
    created_at: DateTime<Utc>,
}

/// Reads a verified Standard Webhooks notification.
pub fn read_standard(event_id: String, body: &[u8]) -> Result<PaymentEvent, WebhookRefusal> {
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| WebhookRefusal::Malformed(format!("not a Standard Webhooks event: {e}")))?;
    let paid = match n.event_type.as_str() {
        "order.paid" | "payment.succeeded" => {
            let p: Paid = serde_json::from_value(n.data)
                .map_err(|e| WebhookRefusal::Malformed(format!("{}: {e}", n.event_type)))?;
            p.metadata
                .and_then(|m| serde_json::from_value::<References>(m).ok())
                .map(|refs| PaidOrder {
                    order: refs.kiln_order,
                    account: refs.kiln_account,
                    transaction_id: p.id,
                    amount: p.total_amount,
                    currency: p.currency.to_uppercase(),
                    paid_at: p.created_at,
                })
        }
        _ => None,
    };
    Ok(PaymentEvent {
        event_id,
        event_type: n.event_type,
        paid,
    })
}

#[async_trait]
impl Payments for DevPayments {
    fn name(&self) -> &'static str {
        "dev"
    }

    async fn checkout(&self, request: &CheckoutRequest<'_>) -> Result<Checkout, ProviderError> {
        Ok(Checkout {
            url: format!("{}{}", self.base_url, Self::checkout_path(request.order)),
            transaction_id: None,
        })
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<PaymentEvent, WebhookRefusal> {
        let id = signature::verify_standard(&self.secret, headers, body, now, self.tolerance)?;
        read_standard(id, body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn pack() -> Pack {
        Pack {
            credits: 100,
            amount: 500,
            currency: "USD".into(),
            price_id: None,
        }
    }

    #[test]
    fn its_notification_verifies_and_reads_back() {
        let dev = DevPayments::new(
            "http://127.0.0.1:8080/",
            vec![9; 32],
            Duration::from_secs(300),
        );
        let (order, account) = (OrderId(Uuid::new_v4()), UserId(Uuid::new_v4()));
        let now = Utc::now();
        let (signed, body) = dev.payment_notification(order, account, &pack(), now);
        let mut headers = HeaderMap::new();
        for (name, value) in &signed {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let event = dev.verify(&headers, &body, now).unwrap();
        assert_eq!(event.event_id, signed[0].1);
        assert_eq!(event.event_type, "order.paid");
        let paid = event.paid.unwrap();
        assert_eq!((paid.order, paid.account), (order, account));
        assert_eq!((paid.amount, paid.currency.as_str()), (500, "USD"));
        assert_eq!(
            dev.webhook_url(),
            "http://127.0.0.1:8080/v1/webhooks/payments"
        );

        let other = DevPayments::new("http://x", vec![8; 32], Duration::from_secs(300));
        assert_eq!(
            other.verify(&headers, &body, now),
            Err(WebhookRefusal::BadSignature)
        );
    }

    #[test]
    fn dodo_payments_and_unrelated_events_read_as_expected() {
        let (order, account) = (Uuid::new_v4(), Uuid::new_v4());
        let dodo = json!({
            "business_id": "bus_1",
            "type": "payment.succeeded",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {
                "payment_id": "pay_1", "total_amount": 1200, "currency": "EUR",
                "created_at": "2026-12-01T09:59:58Z",
                "metadata": {"kiln_order": order, "kiln_account": account},
            },
        });
        let event = read_standard("msg_1".into(), dodo.to_string().as_bytes()).unwrap();
        let paid = event.paid.unwrap();
        assert_eq!(paid.transaction_id, "pay_1");
        assert_eq!(paid.order.0, order);
        assert_eq!(paid.amount, 1200);

        let refund = json!({"type": "order.refunded", "data": {}});
        let event = read_standard("msg_2".into(), refund.to_string().as_bytes()).unwrap();
        assert_eq!(event.paid, None);
        assert!(matches!(
            read_standard("msg_3".into(), b"[1, 2]"),
            Err(WebhookRefusal::Malformed(_))
        ));
    }
}
