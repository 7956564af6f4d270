use std::sync::Arc;

use kiln_store::{Objects, Store, UrlSigner};

use crate::ApiConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub objects: Objects,
    pub signer: Arc<UrlSigner>,
    pub config: Arc<ApiConfig>,
}
