//! Signed, expiring URLs for objects kiln serves itself (local storage in
//! the embedded default). Nothing in storage is public, so a URL is only as
//! good as its HMAC and its expiry.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::SigningKeyError;

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted: as long as the SHA-256 output, below which
/// HMAC's strength drops with the key's.
pub const MIN_KEY_LEN: usize = 32;

/// Signs and checks `path?expires=<unix>&signature=<hex>` URLs with
/// HMAC-SHA256 over `path` + `\n` + `expires`.
#[derive(Clone)]
pub struct UrlSigner {
    /// Keyed once; each signature starts from a clone of it.
    mac: HmacSha256,
}

/// Never prints the key.
impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlSigner { key: <redacted> }")
    }
}

/// Why a signed URL is refused. A forged or altered URL is `Invalid` even
/// when it is also past its expiry, so a forger learns nothing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the link has expired")]
    Expired,
    #[error("the link's signature is invalid")]
    Invalid,
}

/// Where the API serves stored objects.
pub const OBJECT_ROUTE: &str = "/v1/files/";

impl UrlSigner {
    /// Refuses keys shorter than [`MIN_KEY_LEN`] bytes.
    pub fn new(key: Vec<u8>) -> Result<UrlSigner, SigningKeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(SigningKeyError(format!(
                "url signing key is {} bytes, need at least {MIN_KEY_LEN}",
                key.len()
            )));
        }
        let mac = HmacSha256::new_from_slice(&key)
            .map_err(|e| SigningKeyError(format!("url signing key rejected: {e}")))?;
        Ok(UrlSigner { mac })
    }

    /// The embedded default's key: generated on first start (32 random
    /// bytes, hex, file mode 0600) and read back on later starts, so links
    /// handed out survive a restart (see `key_file`).
    pub fn load_or_create(path: &Path) -> Result<UrlSigner, SigningKeyError> {
        let key = crate::key_file::load_or_create(path, "url signing key")?;
        UrlSigner::new(key).map_err(|e| SigningKeyError(format!("{}: {e}", path.display())))
    }

    /// `"{path}?expires={unix}&signature={hex}"`. `path` is the URL path
    /// without a query; sub-second precision of `expires_at` is dropped.
    pub fn sign(&self, path: &str, expires_at: DateTime<Utc>) -> String {
        let expires = expires_at.timestamp();
        let signature = hex::encode(self.mac(path, expires).finalize().into_bytes());
        format!("{path}?expires={expires}&signature={signature}")
    }

    /// The signed link to a stored object, served by `GET /v1/files/{key}`.
    pub fn object_url(&self, object_key: &str, expires_at: DateTime<Utc>) -> String {
        self.sign(&format!("{OBJECT_ROUTE}{object_key}"), expires_at)
    }

    /// Checks the signature (in constant time) before the expiry. A link is
    /// valid strictly before its `expires` second.
    pub fn verify(
        &self,
        path: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let tag = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        self.mac(path, expires)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Invalid)?;
        if now.timestamp() >= expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// `expires` is last and has no newline, so no two (path, expires)
    /// pairs give the same message.
    fn mac(&self, path: &str, expires: i64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use chrono::{Duration, TimeZone};

    use super::*;

    fn signer(byte: u8) -> UrlSigner {
        UrlSigner::new(vec![byte; 32]).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
    }

    /// Splits a signed URL the way the route serving it will.
    fn parts(url: &str) -> (&str, i64, &str) {
        let (path, query) = url.split_once('?').unwrap();
        let (expires, signature) = query.split_once('&').unwrap();
        let expires = expires.strip_prefix("expires=").unwrap().parse().unwrap();
        let signature = signature.strip_prefix("signature=").unwrap();
        (path, expires, signature)
    }

    #[test]
    fn round_trip() {
        let s = signer(7);
        let expires_at = now() + Duration::minutes(15);
        let url = s.sign("/v1/media/images/abc.png", expires_at);
        let (path, expires, signature) = parts(&url);
        assert_eq!(path, "/v1/media/images/abc.png");
        assert_eq!(expires, expires_at.timestamp());
        assert_eq!(signature.len(), 64);
        assert_eq!(s.verify(path, expires, signature, now()), Ok(()));
        // One second before expiry is still fine.
        assert_eq!(
            s.verify(path, expires, signature, expires_at - Duration::seconds(1)),
            Ok(())
        );
    }

    #[test]
    fn signing_is_deterministic() {
        let expires_at = now() + Duration::minutes(5);
        assert_eq!(
            signer(1).sign("/a", expires_at),
            signer(1).sign("/a", expires_at)
        );
    }

    #[test]
    fn tampered_path_is_invalid() {
        let s = signer(7);
        let url = s.sign("/v1/media/images/abc.png", now() + Duration::minutes(15));
        let (_, expires, signature) = parts(&url);
        assert_eq!(
            s.verify("/v1/media/images/abd.png", expires, signature, now()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn tampered_expiry_is_invalid() {
        let s = signer(7);
        let url = s.sign("/a.png", now() + Duration::minutes(15));
        let (path, expires, signature) = parts(&url);
        assert_eq!(
            s.verify(path, expires + 3600, signature, now()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn tampered_signature_is_invalid() {
        let s = signer(7);
        let url = s.sign("/a.png", now() + Duration::minutes(15));
        let (path, expires, signature) = parts(&url);
        let mut tampered = signature.to_owned();
        let last = if tampered.ends_with('0') { "1" } else { "0" };
        tampered.replace_range(63.., last);
        assert_eq!(
            s.verify(path, expires, &tampered, now()),
            Err(SignatureError::Invalid)
        );
        // A prefix of the right tag is not the tag.
        assert_eq!(
            s.verify(path, expires, &signature[..32], now()),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify(path, expires, "", now()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn another_key_is_invalid() {
        let url = signer(7).sign("/a.png", now() + Duration::minutes(15));
        let (path, expires, signature) = parts(&url);
        assert_eq!(
            signer(8).verify(path, expires, signature, now()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn expired_is_expired() {
        let s = signer(7);
        let expires_at = now() - Duration::seconds(1);
        let url = s.sign("/a.png", expires_at);
        let (path, expires, signature) = parts(&url);
        assert_eq!(
            s.verify(path, expires, signature, now()),
            Err(SignatureError::Expired)
        );
        // Expiry is exclusive: at the second itself the link is dead.
        assert_eq!(
            s.verify(path, expires, signature, expires_at),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn expired_and_forged_is_invalid() {
        let s = signer(7);
        let url = s.sign("/a.png", now() - Duration::minutes(1));
        let (_, expires, signature) = parts(&url);
        assert_eq!(
            s.verify("/b.png", expires, signature, now()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn malformed_hex_is_invalid() {
        let s = signer(7);
        let expires = (now() + Duration::minutes(1)).timestamp();
        for signature in ["zz", "abc", "not hex at all", &"g".repeat(64)] {
            assert_eq!(
                s.verify("/a.png", expires, signature, now()),
                Err(SignatureError::Invalid),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            UrlSigner::new(vec![1; 31]),
            Err(SigningKeyError(_))
        ));
        assert!(UrlSigner::new(vec![1; 32]).is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", signer(0xab)),
            "UrlSigner { key: <redacted> }"
        );
    }

    #[test]
    fn key_file_is_created_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("url-signing.key");

        let first = UrlSigner::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(hex::decode(text.trim()).unwrap().len(), 32);

        let second = UrlSigner::load_or_create(&path).unwrap();
        let url = first.sign("/a.png", now() + Duration::minutes(1));
        let (p, expires, signature) = parts(&url);
        assert_eq!(second.verify(p, expires, signature, now()), Ok(()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("url-signing.key")]);
    }

    #[test]
    fn fresh_key_files_differ() {
        let dir = tempfile::tempdir().unwrap();
        let a = UrlSigner::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = UrlSigner::load_or_create(&dir.path().join("b.key")).unwrap();
        assert_ne!(
            a.sign("/x", now()),
            b.sign("/x", now()),
            "each installation gets its own key"
        );
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url-signing.key");
        let signers: Vec<UrlSigner> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| UrlSigner::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let url = signers[0].sign("/x", now());
        for s in &signers {
            assert_eq!(s.sign("/x", now()), url);
        }
    }

    #[test]
    fn corrupt_or_short_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(
            UrlSigner::load_or_create(&path),
            Err(SigningKeyError(_))
        ));
        std::fs::write(&path, hex::encode([1u8; 16])).unwrap();
        assert!(matches!(
            UrlSigner::load_or_create(&path),
            Err(SigningKeyError(_))
        ));
    }
}
