//! Signed links to stored objects for providers to fetch (an image to
//! upscale, a re-hosted reference image): short-lived, and absolute when
//! `storage.public_base_url` says where kiln's API is reachable.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use kiln_store::UrlSigner;

#[derive(Clone)]
pub struct ObjectLinks {
    pub signer: Arc<UrlSigner>,
    /// e.g. `https://kiln.example.com`; without it links are paths, which
    /// only the offline `dev` providers (that never fetch them) accept.
    pub public_base_url: Option<String>,
    pub ttl: Duration,
}

impl ObjectLinks {
    pub fn url(&self, object_key: &str) -> String {
        self.url_until(object_key).0
    }

    /// The link and when it stops working.
    pub fn url_until(&self, object_key: &str) -> (String, DateTime<Utc>) {
        let expires = Utc::now()
            + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::minutes(10));
        let path = self.signer.object_url(object_key, expires);
        let url = match &self.public_base_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path,
        };
        (url, expires)
    }

    /// The same links with another lifetime (a data export's, in its
    /// notice).
    pub fn with_ttl(&self, ttl: Duration) -> ObjectLinks {
        ObjectLinks {
            ttl,
            ..self.clone()
        }
    }
}
