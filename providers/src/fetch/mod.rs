//! The one way kiln downloads an address a user gave it (reference images):
//! a client that cannot be turned against kiln's own network (SSRF).
//!
//! What it refuses, and why:
//! - any scheme but https (no `file:`, no plain http that a network could
//!   rewrite), and addresses with a user name or password;
//! - every address that is not public: loopback, private, link-local (cloud
//!   metadata at 169.254.169.254), CGNAT, multicast, reserved, and the IPv6
//!   forms that embed such an IPv4 address. IP literals are checked before
//!   the request; names are checked by the client's own DNS resolver, on
//!   *every* address the name resolves to, so the address that is checked is
//!   the address that is connected to (no check-then-resolve-again race);
//! - redirects (a public host could otherwise bounce us to a private one);
//! - bodies over the size cap, counted while streaming (a missing or lying
//!   `Content-Length` does not help);
//! - anything that is not a PNG, JPEG, WebP or GIF, by declared type *and*
//!   by magic bytes.
//!
//! Error messages name the host at most, never the full address: a query
//! string may carry a signature or a token.

mod address;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use address::{AddressRefused, GuardedResolver};
use bytes::{Bytes, BytesMut};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Url, redirect};
use serde::Deserialize;

use crate::ProviderError;
use crate::http;

pub use address::is_public;

/// What the fetcher allows. The defaults are the production settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchPolicy {
    /// TEST ONLY: also accept `http://` addresses, so tests can fetch from a
    /// local fake server. Never enable it in production.
    pub allow_http: bool,
    /// TEST ONLY: skip the public-address check, so tests can fetch from a
    /// server on 127.0.0.1. Never enable it in production: it re-opens SSRF.
    pub allow_private_addresses: bool,
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Connecting, sending and reading the whole body, together. Written as
    /// whole milliseconds (`timeout_ms`) in settings.
    #[serde(
        rename = "timeout_ms",
        deserialize_with = "crate::settings::millis::deserialize"
    )]
    pub timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            allow_http: false,
            allow_private_addresses: false,
            max_bytes: 20 * 1024 * 1024,
            timeout: Duration::from_secs(15),
        }
    }
}

/// A downloaded image whose bytes were checked to be one of the accepted
/// formats.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedImage {
    pub bytes: Bytes,
    /// From the magic bytes, not from the server: `image/png`,
    /// `image/jpeg`, `image/webp` or `image/gif`.
    pub content_type: String,
}

/// Prints the size instead of megabytes of image.
impl fmt::Debug for FetchedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedImage")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// Downloads user-supplied image addresses under a [`FetchPolicy`]. Build
/// one and share it: it holds a connection pool.
#[derive(Clone)]
pub struct GuardedFetcher {
    client: reqwest::Client,
    policy: FetchPolicy,
    /// What the addresses are, in messages: `reference image`, `webhook`.
    subject: &'static str,
}

impl fmt::Debug for GuardedFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedFetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl GuardedFetcher {
    pub fn new(policy: FetchPolicy) -> Self {
        Self::with_resolve_overrides(policy, HashMap::new())
    }

    /// Like [`GuardedFetcher::new`], with fixed answers for some host names
    /// (as reqwest's `resolve`), for tests. The fixed addresses go through
    /// the same public-address check as real DNS answers.
    pub fn with_resolve_overrides(
        policy: FetchPolicy,
        overrides: HashMap<String, Vec<IpAddr>>,
    ) -> Self {
        let resolver = GuardedResolver {
            allow_private: policy.allow_private_addresses,
            overrides: Arc::new(
                overrides
                    .into_iter()
                    .map(|(host, addrs)| (host.to_ascii_lowercase(), addrs))
                    .collect(),
            ),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .timeout(policy.timeout)
            // A redirect is refused, never followed: its target would skip
            // the URL checks (and a public host could point at a private one).
            .redirect(redirect::Policy::none())
            // A proxy would do the resolving and connecting for us, out of
            // reach of the address check.
            .no_proxy()
            .https_only(!policy.allow_http)
            .dns_resolver(resolver)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            // Only fails when the TLS backend cannot initialise: a broken
            // build, not a runtime condition.
            .expect("the HTTP client builds");
        GuardedFetcher {
            client,
            policy,
            subject: "reference image",
        }
    }

    /// The same fetcher, naming its addresses `subject` in messages (the
    /// default is `reference image`).
    pub fn for_subject(mut self, subject: &'static str) -> Self {
        self.subject = subject;
        self
    }

    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Downloads `url` if it is allowed and is an image. Every refusal is
    /// permanent (the same address will be refused again) except for
    /// transport failures and 408/429/5xx answers, which may pass later.
    pub async fn fetch_image(&self, url: &str) -> Result<FetchedImage, ProviderError> {
        let url = self.check_url(url)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let who = format!("image host {host}");

        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| request_error(self.subject, &who, &host, &e))?;

        let status = response.status();
        if status.is_redirection() {
            return Err(ProviderError::permanent(
                "redirect_refused",
                format!(
                    "the image at {host} answered with a redirect ({}); redirects are not \
                     followed, give the image's final address",
                    status.as_u16()
                ),
            ));
        }
        if !status.is_success() {
            return Err(http::status_error(
                &who,
                status,
                response.headers(),
                None,
                None,
            ));
        }

        // Refuse what is not declared as an image before reading a byte.
        let declared = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(mime_essence)
            .unwrap_or_default();
        if !declared.starts_with("image/") {
            return Err(not_an_image(
                &host,
                &format!("it was sent as {}", printable_type(&declared)),
            ));
        }

        let max = self.policy.max_bytes;
        if let Some(length) = response.content_length()
            && length > max
        {
            return Err(too_large(&host, max));
        }

        // Counted as it arrives: the declared length may be absent or wrong.
        let capacity = response.content_length().unwrap_or(0).min(max);
        let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http::transport_error(&who, &e))?
        {
            if (body.len() as u64).saturating_add(chunk.len() as u64) > max {
                return Err(too_large(&host, max));
            }
            body.extend_from_slice(&chunk);
        }

        let Some(content_type) = crate::image_type(&body) else {
            return Err(not_an_image(
                &host,
                "its content is not a PNG, JPEG, WebP or GIF image",
            ));
        };
        Ok(FetchedImage {
            bytes: body.freeze(),
            content_type: content_type.to_owned(),
        })
    }

    /// Checks `url` as a request would, without making one: the address
    /// itself, then every address its host resolves to now. A host that
    /// does not resolve passes (DNS may be down for a moment; the request
    /// checks again). The answer to a client giving an address, before it
    /// is kept.
    pub async fn check_address(&self, url: &str) -> Result<(), ProviderError> {
        let url = self.check_url(url)?;
        if self.policy.allow_private_addresses {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        if host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
            // An IP literal, checked above.
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        if let Ok(addrs) = tokio::net::lookup_host((host, port)).await
            && addrs.into_iter().any(|a| !is_public(a.ip()))
        {
            return Err(address_not_allowed(self.subject, host));
        }
        Ok(())
    }

    /// POSTs `body` as JSON to `url` with `headers`, under the same guard as
    /// [`GuardedFetcher::fetch_image`]: no redirect is followed, every
    /// address must be public, and at most `max_bytes` of the answer is
    /// read (then dropped: only the status matters). A 2xx answer is `Ok`
    /// with its status. 408, 429, 5xx and transport failures are transient;
    /// a redirect or another 4xx is permanent.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, PostFailure> {
        let url = self.check_url(url).map_err(PostFailure::unanswered)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let who = format!("{} host {host}", self.subject);
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| PostFailure::unanswered(request_error(self.subject, &who, &host, &e)))?;
        let status = response.status();
        // Read (a capped amount of) the answer so the connection can be
        // reused; what it says is not kept.
        let mut read: u64 = 0;
        while read < self.policy.max_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len() as u64,
                _ => break,
            }
        }
        let code = status.as_u16();
        if status.is_success() {
            return Ok(code);
        }
        let error = if status.is_redirection() {
            ProviderError::permanent(
                "redirect_refused",
                format!("the {who} answered with a redirect ({code}); redirects are not followed"),
            )
        } else if matches!(code, 408 | 429) || status.is_server_error() {
            ProviderError::Transient {
                code: format!("status_{code}"),
                message: format!("the {who} answered {code}"),
                retry_after: http::retry_after(response.headers()),
            }
        } else {
            ProviderError::permanent(
                format!("status_{code}"),
                format!("the {who} answered {code}"),
            )
        };
        Err(PostFailure {
            status: Some(code),
            error,
        })
    }

    /// Everything that can be decided from the address alone.
    fn check_url(&self, raw: &str) -> Result<Url, ProviderError> {
        // The parser's message never quotes the input.
        let url = Url::parse(raw.trim()).map_err(|e| {
            ProviderError::permanent(
                "invalid_url",
                format!("the {} address is not a valid URL ({e})", self.subject),
            )
        })?;

        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => self.policy.allow_http,
            _ => false,
        };
        if !scheme_ok {
            return Err(ProviderError::permanent(
                "scheme_not_allowed",
                format!(
                    "{} addresses must be https:// addresses, not {}:",
                    self.subject,
                    url.scheme()
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ProviderError::permanent(
                "invalid_url",
                format!(
                    "{} addresses must not contain a user name or password",
                    self.subject
                ),
            ));
        }

        // The connector dials IP literals without asking the resolver, so
        // they are checked here. `Url` has already normalised odd spellings
        // (`http://2130706433/`, `0x7f.1`) into the address they mean.
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(ProviderError::permanent(
                "invalid_url",
                format!("the {} address has no host", self.subject),
            ));
        };
        let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        if let Some(ip) = literal
            && !self.policy.allow_private_addresses
            && !is_public(ip)
        {
            return Err(address_not_allowed(self.subject, host));
        }
        Ok(url)
    }
}

/// A POST that did not succeed: the receiver's status when it answered,
/// and the error (transient or permanent) it means.
#[derive(Debug, Clone)]
pub struct PostFailure {
    pub status: Option<u16>,
    pub error: ProviderError,
}

impl PostFailure {
    fn unanswered(error: ProviderError) -> PostFailure {
        PostFailure {
            status: None,
            error,
        }
    }
}

/// A failed request: the resolver's refusal is permanent, anything else is
/// the shared transport policy (timeouts and resets retry).
fn request_error(subject: &str, who: &str, host: &str, e: &reqwest::Error) -> ProviderError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<AddressRefused>().is_some() {
            return address_not_allowed(subject, host);
        }
        source = err.source();
    }
    http::transport_error(who, e)
}

fn address_not_allowed(subject: &str, host: &str) -> ProviderError {
    ProviderError::permanent(
        "address_not_allowed",
        format!(
            "the {subject} host {host} is a private, local or reserved address; \
             only public internet addresses can be reached"
        ),
    )
}

fn too_large(host: &str, max: u64) -> ProviderError {
    ProviderError::permanent(
        "too_large",
        format!("the reference image at {host} is larger than the limit of {max} bytes"),
    )
}

fn not_an_image(host: &str, why: &str) -> ProviderError {
    ProviderError::permanent(
        "not_an_image",
        format!("the reference image at {host} is not a PNG, JPEG, WebP or GIF image: {why}"),
    )
}

/// `Image/PNG; charset=x` -> `image/png`.
fn mime_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The declared type as it may appear in an error message: it comes from a
/// stranger's server, so only a short, plain token is echoed.
fn printable_type(essence: &str) -> String {
    let plain = !essence.is_empty()
        && essence.len() <= 64
        && essence
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+-.".contains(&b));
    if plain {
        essence.to_owned()
    } else if essence.is_empty() {
        "no content type".to_owned()
    } else {
        "an unrecognised content type".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    /// The production policy.
    fn strict() -> GuardedFetcher {
        GuardedFetcher::new(FetchPolicy::default())
    }

    /// The test-only permissions, so a fake server on 127.0.0.1 can answer.
    fn local(max_bytes: u64) -> GuardedFetcher {
        GuardedFetcher::new(FetchPolicy {
            allow_http: true,
            allow_private_addresses: true,
            max_bytes,
            timeout: Duration::from_secs(5),
        })
    }

    fn png_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 4, 3);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[200u8; 4 * 3 * 3]).unwrap();
        writer.finish().unwrap();
        out
    }

    async fn serve(status: u16, content_type: &str, body: Vec<u8>) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/ref.png"))
            .respond_with(ResponseTemplate::new(status).set_body_raw(body, content_type))
            .expect(1)
            .mount(&server)
            .await;
        server
    }

    async fn refused(fetcher: &GuardedFetcher, url: &str) -> ProviderError {
        fetcher
            .fetch_image(url)
            .await
            .expect_err("the fetch should have been refused")
    }

    #[track_caller]
    fn assert_permanent(e: &ProviderError, code: &str) {
        assert_eq!(e.code(), code, "{e}");
        assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
    }

    // ---- policy and small pieces ----

    #[test]
    fn policy_defaults_are_production_safe() {
        let p = FetchPolicy::default();
        assert!(!p.allow_http);
        assert!(!p.allow_private_addresses);
        assert_eq!(p.max_bytes, 20 * 1024 * 1024);
        assert_eq!(p.timeout, Duration::from_secs(15));
    }

    #[test]
    fn policy_reads_as_a_settings_section() {
        let p: FetchPolicy =
            serde_json::from_str(r#"{"max_bytes": 1024, "timeout_ms": 2500}"#).unwrap();
        assert_eq!(
            p,
            FetchPolicy {
                max_bytes: 1024,
                timeout: Duration::from_millis(2500),
                ..FetchPolicy::default()
            }
        );
        assert_eq!(
            serde_json::from_str::<FetchPolicy>("{}").unwrap(),
            FetchPolicy::default()
        );
        assert!(serde_json::from_str::<FetchPolicy>(r#"{"timeout": 5}"#).is_err());
    }

    #[test]
    fn magic_bytes_are_recognised() {
        assert_eq!(crate::image_type(&png_bytes()), Some("image/png"));
        assert_eq!(
            crate::image_type(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10]),
            Some("image/jpeg")
        );
        assert_eq!(crate::image_type(b"GIF89a\x01\x00"), Some("image/gif"));
        assert_eq!(crate::image_type(b"GIF87a\x01\x00"), Some("image/gif"));
        assert_eq!(
            crate::image_type(b"RIFF\x24\x00\x00\x00WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(crate::image_type(b"RIFF\x24\x00\x00\x00WAVEfmt "), None);
        assert_eq!(crate::image_type(b"<svg xmlns="), None);
        assert_eq!(crate::image_type(b"\x89PN"), None);
        assert_eq!(crate::image_type(b""), None);
    }

    #[test]
    fn fetched_image_debug_omits_the_bytes() {
        let image = FetchedImage {
            bytes: Bytes::from(vec![0u8; 2048]),
            content_type: "image/png".into(),
        };
        assert_eq!(
            format!("{image:?}"),
            r#"FetchedImage { bytes: <2048 bytes>, content_type: "image/png" }"#
        );
    }

    #[test]
    fn only_plain_content_types_are_echoed() {
        assert_eq!(mime_essence("Text/HTML; charset=utf-8"), "text/html");
        assert_eq!(printable_type("text/html"), "text/html");
        assert_eq!(printable_type(""), "no content type");
        assert_eq!(
            printable_type("text/html<script>"),
            "an unrecognised content type"
        );
    }

    // ---- refused before any request ----

    #[tokio::test]
    async fn loopback_literal_is_refused() {
        let e = refused(&strict(), "https://127.0.0.1/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        // Other spellings of the same address are normalised and refused.
        for url in ["https://2130706433/x.png", "https://0x7f.1/x.png"] {
            assert_permanent(&refused(&strict(), url).await, "address_not_allowed");
        }
    }

    #[tokio::test]
    async fn private_literal_is_refused() {
        let e = refused(&strict(), "https://10.0.0.1/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
    }

    #[tokio::test]
    async fn cloud_metadata_address_is_refused() {
        let e = refused(&strict(), "https://169.254.169.254/latest/meta-data/").await;
        assert_permanent(&e, "address_not_allowed");
    }

    #[tokio::test]
    async fn ipv6_loopback_literal_is_refused() {
        let e = refused(&strict(), "https://[::1]/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
    }

    #[tokio::test]
    async fn ipv4_mapped_loopback_literal_is_refused() {
        let e = refused(&strict(), "https://[::ffff:127.0.0.1]/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
    }

    #[tokio::test]
    async fn plain_http_is_refused_by_default() {
        let e = refused(&strict(), "http://images.example/ref.png").await;
        assert_permanent(&e, "scheme_not_allowed");
        for url in ["ftp://images.example/ref.png", "file:///etc/passwd"] {
            assert_permanent(&refused(&strict(), url).await, "scheme_not_allowed");
        }
    }

    #[tokio::test]
    async fn userinfo_is_refused() {
        let e = refused(&strict(), "https://user:secret@images.example/ref.png").await;
        assert_permanent(&e, "invalid_url");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = refused(&strict(), "https://user@images.example/ref.png").await;
        assert_permanent(&e, "invalid_url");
    }

    #[tokio::test]
    async fn malformed_addresses_are_refused_without_echoing_them() {
        for url in [
            "",
            "not a url",
            "https://",
            "https://exa mple.com/?token=s3cr3t",
        ] {
            let e = refused(&strict(), url).await;
            assert_permanent(&e, "invalid_url");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    // ---- refused by the resolver ----

    #[tokio::test]
    async fn name_resolving_to_loopback_is_refused() {
        let fetcher = GuardedFetcher::with_resolve_overrides(
            FetchPolicy::default(),
            HashMap::from([("images.example".to_owned(), vec![ip("127.0.0.1")])]),
        );
        let e = refused(&fetcher, "https://images.example/ref.png?sig=s3cr3t").await;
        assert_permanent(&e, "address_not_allowed");
        assert!(e.to_string().contains("images.example"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[tokio::test]
    async fn every_resolved_address_is_checked() {
        // One public address does not excuse a private one beside it.
        let fetcher = GuardedFetcher::with_resolve_overrides(
            FetchPolicy::default(),
            HashMap::from([(
                "Images.Example".to_owned(),
                vec![ip("93.184.216.34"), ip("::ffff:10.0.0.1")],
            )]),
        );
        let e = refused(&fetcher, "https://IMAGES.example/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
    }

    #[tokio::test]
    async fn localhost_is_refused_through_real_dns() {
        let e = refused(&strict(), "https://localhost/ref.png").await;
        assert_permanent(&e, "address_not_allowed");
    }

    // ---- refused from the answer ----

    #[tokio::test]
    async fn redirect_to_a_private_address_is_refused_not_followed() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/ref.png"))
            .respond_with(
                ResponseTemplate::new(302).insert_header("location", "http://10.0.0.1/ref.png"),
            )
            .expect(1)
            .mount(&server)
            .await;
        // Even with the test permissions on, which would let a followed
        // redirect reach 10.0.0.1.
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_permanent(&e, "redirect_refused");
        assert!(!e.to_string().contains("10.0.0.1"), "{e}");
    }

    #[tokio::test]
    async fn oversized_body_with_content_length_is_refused() {
        let mut body = png_bytes();
        body.resize(4096, 0);
        let server = serve(200, "image/png", body).await;
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_permanent(&e, "too_large");
        assert!(e.to_string().contains("1024 bytes"), "{e}");
    }

    /// Answers one request with a chunked PNG body that never ends: only a
    /// fetcher that counts while reading gets `too_large` (one that reads
    /// to the end would time out instead).
    async fn endless_chunked_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut chunk = png_bytes();
            chunk.resize(512, 0);
            loop {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                // The client hangs up once it has seen too much.
                if socket.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn oversized_streamed_body_is_refused_while_reading() {
        let addr = endless_chunked_server().await;
        let e = refused(&local(64 * 1024), &format!("http://{addr}/ref.png")).await;
        assert_permanent(&e, "too_large");
    }

    #[tokio::test]
    async fn html_is_not_an_image() {
        let server = serve(200, "text/html; charset=utf-8", b"<html></html>".to_vec()).await;
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_permanent(&e, "not_an_image");
        assert!(e.to_string().contains("text/html"), "{e}");
    }

    #[tokio::test]
    async fn image_type_with_other_bytes_is_not_an_image() {
        let server = serve(200, "image/png", b"<svg xmlns='x'/>".to_vec()).await;
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_permanent(&e, "not_an_image");
    }

    #[tokio::test]
    async fn error_statuses_follow_the_shared_retry_policy() {
        let server = serve(404, "text/plain", b"gone".to_vec()).await;
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_permanent(&e, "not_found");

        let server = serve(503, "text/plain", b"busy".to_vec()).await;
        let e = refused(&local(1024), &format!("{}/ref.png", server.uri())).await;
        assert_eq!(e.code(), "server_error");
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
    }

    // ---- allowed ----

    #[tokio::test]
    async fn a_real_png_is_fetched() {
        let png = png_bytes();
        // Declared loosely; the sniffed type is what is reported.
        let server = serve(200, "image/octet-stream", png.clone()).await;
        let image = local(1024)
            .fetch_image(&format!("{}/ref.png", server.uri()))
            .await
            .unwrap();
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, Bytes::from(png));
    }

    #[tokio::test]
    async fn overrides_reach_a_local_server_only_with_the_test_permission() {
        let png = png_bytes();
        let server = serve(200, "image/png", png.clone()).await;
        let port = server.address().port();
        let url = format!("http://images.example:{port}/ref.png");
        let overrides = HashMap::from([("images.example".to_owned(), vec![ip("127.0.0.1")])]);

        // http allowed but private addresses not: the fixed answer is
        // checked like a DNS answer and refused.
        let http_only = FetchPolicy {
            allow_http: true,
            ..FetchPolicy::default()
        };
        let fetcher = GuardedFetcher::with_resolve_overrides(http_only, overrides.clone());
        assert_permanent(&refused(&fetcher, &url).await, "address_not_allowed");

        let fetcher =
            GuardedFetcher::with_resolve_overrides(local(1024).policy().clone(), overrides);
        let image = fetcher.fetch_image(&url).await.unwrap();
        assert_eq!(image.bytes, Bytes::from(png));
    }
}
