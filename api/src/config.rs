use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::throttle::Window;

/// Settings of the public API (`[api]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// bcrypt cost for password hashes; 12 or more in production.
    pub bcrypt_cost: u32,
    /// How long a login token is valid.
    pub token_ttl_secs: u64,
    /// How long a process may answer a token it looked up lately without
    /// asking the database (0: never). A revocation ends it at once.
    pub session_cache_secs: u64,
    /// How long a signed image URL is valid.
    pub signed_url_ttl_secs: u64,
    /// How long a data export's link is valid (signed when the export is
    /// read or its notice sent; never past `retention.export_days`).
    pub export_link_ttl_secs: u64,
    /// The longest prompt accepted, in characters.
    pub max_prompt_chars: usize,
    /// The most images one generation may ask for.
    pub max_images: u32,
    /// The most reference images one generation may give.
    pub max_reference_images: usize,
    /// Image sizes a generation may ask for, as `WIDTHxHEIGHT`.
    pub sizes: Vec<String>,
    /// The model used when a request names none.
    pub default_model: String,
    /// Models a request may name.
    pub models: Vec<String>,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 503 (long-polls end before).
    pub request_timeout_ms: u64,
    /// How long a verification code works.
    pub code_ttl_secs: u64,
    /// The least time between two codes (or sign-up notices) sent to one
    /// address; 0 for no such limit.
    pub code_resend_interval_secs: u64,
    /// The most codes (or sign-up notices) one address gets in an hour.
    pub codes_per_hour: u32,
    /// Hex key (32+ bytes) that codes are derived and hashed under; every
    /// `serve` and `work` process must share it. When unset, one is
    /// generated into `code_key_file` on first start and reused.
    pub code_key: Option<SecretString>,
    pub code_key_file: PathBuf,
    /// The header a trusted reverse proxy puts the client's address in
    /// (`X-Forwarded-For`, `X-Real-IP`); its last address is the client's
    /// IP in the access log. Unset: the connection's peer address.
    pub client_ip_header: Option<String>,
    /// Wrong passwords one address may take in `login_failure_window_secs`
    /// (known or not); then every login to it answers 429 until the window
    /// has room (0: no limit).
    pub login_failures_per_address: u32,
    /// Wrong passwords from one IP, to any addresses, in the window.
    pub login_failures_per_ip: u32,
    pub login_failure_window_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bcrypt_cost: 12,
            token_ttl_secs: 30 * 24 * 3600,
            session_cache_secs: 60,
            signed_url_ttl_secs: 600,
            export_link_ttl_secs: 24 * 3600,
            max_prompt_chars: 4000,
            max_images: 4,
            max_reference_images: 4,
            sizes: ["256x256", "512x512", "1024x1024", "1024x1536", "1536x1024"]
                .map(String::from)
                .to_vec(),
            default_model: "dev-image-1".to_owned(),
            models: vec!["dev-image-1".to_owned()],
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 40_000,
            code_ttl_secs: 600,
            code_resend_interval_secs: 60,
            codes_per_hour: 5,
            code_key: None,
            code_key_file: PathBuf::from("data/code.key"),
            client_ip_header: None,
            login_failures_per_address: 5,
            login_failures_per_ip: 50,
            login_failure_window_secs: 900,
        }
    }
}

/// A bad `[api]` setting; the text names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiConfigError {
    #[error("api.bcrypt_cost must be between 4 and 31")]
    BcryptCost,
    #[error(
        "api.token_ttl_secs, api.signed_url_ttl_secs and api.export_link_ttl_secs must be above 0"
    )]
    ZeroTtl,
    #[error("api.sizes entries must look like 1024x1024")]
    Size,
    #[error("api.default_model must be one of api.models")]
    DefaultModel,
    #[error("api.request_timeout_ms must exceed the 30 s long-poll")]
    RequestTimeout,
    #[error("api.code_ttl_secs must be between 1 and 86400")]
    CodeTtl,
    #[error("api.codes_per_hour must be at least 1")]
    CodesPerHour,
    #[error("api.code_key (KILN_API_CODE_KEY) must be at least 32 bytes as hex")]
    CodeKey,
    #[error(
        "api.client_ip_header (KILN_API_CLIENT_IP_HEADER) must be a header name, e.g. X-Forwarded-For"
    )]
    ClientIpHeader,
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ApiConfigError::BcryptCost);
        }
        if self.token_ttl_secs == 0
            || self.signed_url_ttl_secs == 0
            || self.export_link_ttl_secs == 0
        {
            return Err(ApiConfigError::ZeroTtl);
        }
        if self.sizes.iter().any(|s| parse_size(s).is_none()) {
            return Err(ApiConfigError::Size);
        }
        if !self.models.contains(&self.default_model) {
            return Err(ApiConfigError::DefaultModel);
        }
        if self.request_timeout_ms < 31_000 {
            return Err(ApiConfigError::RequestTimeout);
        }
        if !(1..=86_400).contains(&self.code_ttl_secs) {
            return Err(ApiConfigError::CodeTtl);
        }
        if self.codes_per_hour == 0 {
            return Err(ApiConfigError::CodesPerHour);
        }
        if let Some(key) = &self.code_key
            && hex::decode(key.expose_secret().trim()).map_or(true, |k| k.len() < 32)
        {
            return Err(ApiConfigError::CodeKey);
        }
        if let Some(header) = &self.client_ip_header
            && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            return Err(ApiConfigError::ClientIpHeader);
        }
        Ok(())
    }

    /// The limits on codes and sign-up notices sent to one address.
    pub fn code_windows(&self) -> [Window; 2] {
        [
            Window {
                max: 1,
                per: Duration::from_secs(self.code_resend_interval_secs),
            },
            Window {
                max: self.codes_per_hour,
                per: Duration::from_secs(3600),
            },
        ]
    }

    /// The limits on wrong passwords: for one address, and from one IP.
    pub fn login_windows(&self) -> ([Window; 1], [Window; 1]) {
        let per = Duration::from_secs(self.login_failure_window_secs);
        (
            [Window {
                max: self.login_failures_per_address,
                per,
            }],
            [Window {
                max: self.login_failures_per_ip,
                per,
            }],
        )
    }

    /// The code key as bytes, when it is set (validated to be hex).
    pub fn code_key_bytes(&self) -> Option<Result<Vec<u8>, hex::FromHexError>> {
        self.code_key
            .as_ref()
            .map(|k| hex::decode(k.expose_secret().trim()))
    }
}

/// `"1024x768"` -> (1024, 768).
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// What things cost and what accounts are given (`[credits]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreditsConfig {
    /// Given to every account once, when it is first verified.
    pub signup_grant: u32,
    /// Given to an account that signed up with a referral code, and to
    /// the account whose code it was, on that first verification.
    pub referral_bonus: u32,
    /// The price of one generated image, by size (`WIDTHxHEIGHT`, as in
    /// `api.sizes`); every size a request may ask for needs one.
    pub image_prices: BTreeMap<String, u32>,
    /// The price of one upscale, by scale (`"2"`, `"4"`).
    pub upscale_prices: BTreeMap<String, u32>,
}

impl Default for CreditsConfig {
    fn default() -> Self {
        let prices =
            |pairs: &[(&str, u32)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        CreditsConfig {
            signup_grant: 50,
            referral_bonus: 10,
            image_prices: prices(&[
                ("256x256", 1),
                ("512x512", 1),
                ("1024x1024", 1),
                ("1024x1536", 2),
                ("1536x1024", 2),
            ]),
            upscale_prices: prices(&[("2", 1), ("4", 2)]),
        }
    }
}

/// A bad `[credits]` setting; the text names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditsConfigError {
    #[error("credits.image_prices has no price for the size {0} of api.sizes")]
    ImagePrice(String),
    #[error("credits.upscale_prices has no price for the scale {0}")]
    UpscalePrice(u32),
}

impl CreditsConfig {
    /// Every size `api` offers and every upscale scale has a price.
    pub fn validate(&self, api: &ApiConfig) -> Result<(), CreditsConfigError> {
        if let Some(size) = api
            .sizes
            .iter()
            .find(|s| !self.image_prices.contains_key(*s))
        {
            return Err(CreditsConfigError::ImagePrice(size.clone()));
        }
        if let Some(scale) = kiln_jobs::UpscaleImage::SCALES
            .iter()
            .find(|s| !self.upscale_prices.contains_key(&s.to_string()))
        {
            return Err(CreditsConfigError::UpscalePrice(*scale));
        }
        Ok(())
    }

    /// What `n` images of `size` cost (validated to have a price; an
    /// unpriced size costs nothing rather than failing a request).
    pub fn images(&self, size: &str, n: u32) -> u32 {
        self.image_prices
            .get(size)
            .copied()
            .unwrap_or(0)
            .saturating_mul(n)
    }

    pub fn upscale(&self, scale: u32) -> u32 {
        self.upscale_prices
            .get(&scale.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// What a first verification grants.
    pub fn verification_grants(&self) -> kiln_store::credits::VerificationGrants {
        kiln_store::credits::VerificationGrants {
            signup: self.signup_grant,
            referral_bonus: self.referral_bonus,
        }
    }
}
