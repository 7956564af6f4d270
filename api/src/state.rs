use std::sync::Arc;

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
    /// The (account, IP) pairs this process has recorded lately.
    pub seen_ips: Arc<crate::auth::SeenIps>,
    /// Verification codes: derived, hashed and throttled under this key.
    pub codes: Arc<CodeKey>,
    /// How often codes may be sent to one address.
    pub throttle: Arc<dyn Throttle>,
    /// Services besides the database that must answer for `/readyz`
    /// (Redis, when configured).
    pub dependencies: Vec<Arc<dyn Dependency>>,
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
