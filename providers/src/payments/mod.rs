//! Payments: credits are sold through a merchant of record, which takes the
//! money, the tax and the card details, so kiln never sees them. The
//! [`Payments`] trait opens a checkout for an order and verifies the
//! merchant's signed notifications; the `[payments]` settings pick the
//! merchant (`dev`, the offline default, or `paddle`) and the packs on
//! sale.

pub mod dev;
pub mod paddle;
pub mod signature;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{OrderId, UserId};
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ProviderError;

pub use dev::DevPayments;
pub use paddle::PaddlePayments;

/// A pack of credits on sale (`[payments.packs.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    /// What the pack adds to the balance.
    pub credits: u32,
    /// Its price in the currency's minor unit (500 = 5.00), as the dev
    /// checkout charges it and `GET /v1/credits/packs` shows it. Paddle
    /// charges the price `price_id` names.
    pub amount: u64,
    /// ISO 4217 (`USD`).
    pub currency: String,
    /// The Paddle price (`pri_…`); required with `paddle`.
    pub price_id: Option<String>,
}

/// What a checkout is for.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutRequest<'a> {
    pub order: OrderId,
    pub account: UserId,
    pub pack: &'a Pack,
    /// Passed to the merchant so the buyer need not type it (only when
    /// `payments.share_email` and the account has one).
    pub customer_email: Option<&'a str>,
}

/// A checkout the buyer opens in a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub url: String,
    /// The merchant's id for the payment, when it has one before payment
    /// (Paddle `txn_…`).
    pub transaction_id: Option<String>,
}

/// A verified notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    /// The merchant's id for it, repeated on every redelivery.
    pub event_id: String,
    pub event_type: String,
    /// Set when it says an order was paid.
    pub paid: Option<PaidOrder>,
}

/// A completed payment, as the merchant reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOrder {
    /// From the references kiln put in the checkout's custom data.
    pub order: OrderId,
    pub account: UserId,
    pub transaction_id: String,
    /// In the currency's minor unit.
    pub amount: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
}

/// Why a notification is refused. Nothing is applied for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefusal {
    #[error("the notification has no {0} header")]
    Unsigned(&'static str),
    #[error("the notification's signature does not match")]
    BadSignature,
    #[error("the notification's timestamp is outside the accepted window")]
    Stale,
    #[error("the notification is signed but cannot be read: {0}")]
    Malformed(String),
}

impl WebhookRefusal {
    /// Every code [`WebhookRefusal::code`] gives.
    pub const CODES: [&'static str; 3] = [
        "invalid_signature",
        "stale_signature",
        "invalid_notification",
    ];

    /// The problem code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookRefusal::Unsigned(_) | WebhookRefusal::BadSignature => "invalid_signature",
            WebhookRefusal::Stale => "stale_signature",
            WebhookRefusal::Malformed(_) => "invalid_notification",
        }
    }
}

/// The references kiln puts in a checkout's custom data (no personal data:
/// two random ids), and reads back from the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct References {
    pub kiln_order: OrderId,
    pub kiln_account: UserId,
}

/// A merchant of record.
#[async_trait]
pub trait Payments: Send + Sync + 'static {
    /// Recorded with each order and notification (`dev`, `paddle`).
    fn name(&self) -> &'static str;
    /// Opens a checkout for an order.
    async fn checkout(&self, request: &CheckoutRequest<'_>) -> Result<Checkout, ProviderError>;
    /// Verifies a notification's signature over its raw body, then reads
    /// it.
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<PaymentEvent, WebhookRefusal>;
}

/// Which merchant takes payments (`payments.provider`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// kiln's own checkout page, which pays by a signed notification to
    /// kiln; the default, needs nothing, takes no money.
    #[default]
    Dev,
    /// Paddle Billing.
    Paddle,
}

/// The `[payments]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsSettings {
    /// `dev` (default) or `paddle`.
    pub provider: Provider,
    /// The packs on sale, by name.
    pub packs: BTreeMap<String, Pack>,
    /// Whether a checkout passes the account's email to the merchant, so
    /// the buyer need not type it (default true).
    pub share_email: bool,
    /// Paddle's API root (`https://sandbox-api.paddle.com` for the sandbox).
    pub paddle_base_url: String,
    /// Paddle API key; required for `paddle`.
    pub paddle_api_key: Option<SecretString>,
    /// The notification destination's secret key; required for `paddle`.
    /// The dev provider generates its own into `dev_secret_file`.
    pub webhook_secret: Option<SecretString>,
    /// How far a notification's timestamp may be from now, in seconds
    /// (default 5 for Paddle, as its SDKs use; 300 for the dev provider's
    /// Standard Webhooks).
    pub webhook_tolerance_secs: Option<u64>,
    /// Where the dev provider keeps its signing secret.
    pub dev_secret_file: PathBuf,
    /// A request's timeout, in milliseconds (default 10 000).
    pub timeout_ms: u64,
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        let pack = |credits, amount| Pack {
            credits,
            amount,
            currency: "USD".into(),
            price_id: None,
        };
        PaymentsSettings {
            provider: Provider::Dev,
            packs: BTreeMap::from([
                ("small".to_owned(), pack(100, 500)),
                ("large".to_owned(), pack(1000, 4000)),
            ]),
            share_email: true,
            paddle_base_url: PaddlePayments::DEFAULT_BASE_URL.to_owned(),
            paddle_api_key: None,
            webhook_secret: None,
            webhook_tolerance_secs: None,
            dev_secret_file: PathBuf::from("data/payments.key"),
            timeout_ms: 10_000,
        }
    }
}

fn secret_present(value: &Option<SecretString>) -> bool {
    value
        .as_ref()
        .is_some_and(|s| !s.expose_secret().trim().is_empty())
}

impl PaymentsSettings {
    /// Every problem a start-up should refuse, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("payments.timeout_ms: must be more than 0".into());
        }
        if self.packs.is_empty() {
            return Err("payments.packs: at least one pack must be on sale".into());
        }
        for (name, pack) in &self.packs {
            let setting = format!("payments.packs.{name}");
            let name_ok = !name.is_empty()
                && name.len() <= 40
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!(
                    "{setting}: a pack name is 1 to 40 letters, digits, - or _"
                ));
            }
            if pack.credits == 0 {
                return Err(format!("{setting}.credits: must be more than 0"));
            }
            let currency_ok =
                pack.currency.len() == 3 && pack.currency.bytes().all(|b| b.is_ascii_uppercase());
            if !currency_ok {
                return Err(format!(
                    "{setting}.currency: an ISO 4217 code in capitals, like USD"
                ));
            }
            if self.provider == Provider::Paddle
                && !pack
                    .price_id
                    .as_deref()
                    .is_some_and(|p| p.starts_with("pri_"))
            {
                return Err(format!(
                    "{setting}.price_id: a Paddle price id (pri_…) is required when payments.provider = \"paddle\""
                ));
            }
        }
        if self.provider == Provider::Paddle {
            let required = |name: &str| {
                format!("payments.{name}: required when payments.provider = \"paddle\"")
            };
            if !(self.paddle_base_url.starts_with("https://")
                || self.paddle_base_url.starts_with("http://"))
            {
                return Err("payments.paddle_base_url: must be an http:// or https:// URL".into());
            }
            if !secret_present(&self.paddle_api_key) {
                return Err(required("paddle_api_key"));
            }
            if !secret_present(&self.webhook_secret) {
                return Err(required("webhook_secret"));
            }
        }
        Ok(())
    }

    fn tolerance(&self, default_secs: u64) -> Duration {
        Duration::from_secs(self.webhook_tolerance_secs.unwrap_or(default_secs))
    }

    /// The configured merchant. The dev provider's pages live under
    /// `base_url` (where buyers reach this API) and it signs with
    /// `dev_secret`.
    pub fn build(&self, base_url: &str, dev_secret: Vec<u8>) -> Result<Built, String> {
        self.validate()?;
        let timeout = Duration::from_millis(self.timeout_ms);
        Ok(match self.provider {
            Provider::Dev => {
                let dev = Arc::new(DevPayments::new(base_url, dev_secret, self.tolerance(300)));
                Built {
                    payments: dev.clone(),
                    dev: Some(dev),
                }
            }
            Provider::Paddle => {
                let expose = |s: &Option<SecretString>| {
                    s.clone()
                        .unwrap_or_else(|| SecretString::from(String::new()))
                };
                Built {
                    payments: Arc::new(PaddlePayments::new(
                        &self.paddle_base_url,
                        expose(&self.paddle_api_key),
                        expose(&self.webhook_secret),
                        self.tolerance(5),
                        timeout,
                    )),
                    dev: None,
                }
            }
        })
    }
}

/// The merchant, and the dev provider again when it is the one (its
/// checkout pages are served by the API).
pub struct Built {
    pub payments: Arc<dyn Payments>,
    pub dev: Option<Arc<DevPayments>>,
}
