use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_providers::payments::{DevPayments, Pack, Payments, PaymentsSettings};
use kiln_store::{CodeKey, Objects, Store, UrlSigner};

use crate::{ApiConfig, CreditsConfig, Throttle};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub objects: Objects,
    pub signer: Arc<UrlSigner>,
    pub config: Arc<ApiConfig>,
    /// Prices and grants.
    pub credits: Arc<CreditsConfig>,
    /// How long each class of data is kept (what a deletion promises).
    pub retention: Arc<kiln_jobs::RetentionSettings>,
    /// How credits are sold.
    pub shop: Arc<Shop>,
    /// The (account, IP) pairs this process has recorded lately.
    pub seen_ips: Arc<crate::auth::SeenIps>,
    /// The event streams open in this process, per account.
    pub streams: Arc<crate::routes::OpenStreams>,
    /// Verification codes: derived, hashed and throttled under this key.
    pub codes: Arc<CodeKey>,
    /// How often codes may be sent to one address.
    pub throttle: Arc<dyn Throttle>,
    /// Services besides the database that must answer for `/readyz`
    /// (Redis, when configured).
    pub dependencies: Vec<Arc<dyn Dependency>>,
    /// Checks clients' webhook URLs as the deliveries will (`[webhooks]`).
    pub webhook_guard: Arc<kiln_providers::fetch::GuardedFetcher>,
}

/// A service the process needs, as `/readyz` sees it.
#[async_trait::async_trait]
pub trait Dependency: Send + Sync {
    /// Named in the readiness answer, e.g. `redis`.
    fn name(&self) -> &'static str;
    async fn ping(&self) -> Result<(), DependencyError>;
}

/// Why a dependency did not answer a ping, as its client tells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DependencyError(pub String);

/// How credits are sold: the merchant of record and the packs on sale.
pub struct Shop {
    pub merchant: Arc<dyn Payments>,
    /// The merchant again when it is the dev provider, whose checkout pages
    /// the API serves itself.
    pub dev: Option<Arc<DevPayments>>,
    pub packs: BTreeMap<String, Pack>,
    /// Whether checkout passes the account's email to the merchant.
    pub share_email: bool,
}

impl Shop {
    /// The shop the `[payments]` settings describe; the dev merchant's pages
    /// are under `base_url` and it signs with `dev_secret`.
    pub fn new(
        settings: &PaymentsSettings,
        base_url: &str,
        dev_secret: Vec<u8>,
    ) -> Result<Shop, String> {
        let built = settings.build(base_url, dev_secret)?;
        Ok(Shop {
            merchant: built.payments,
            dev: built.dev,
            packs: settings.packs.clone(),
            share_email: settings.share_email,
        })
    }
}
