//! The server secret behind verification codes, which prove that a user
//! holds their email or phone and must never be readable from the
//! database. A code is never
//! stored: it is derived from its row's random id under this key when the
//! worker sends it, and the row keeps only an HMAC-SHA256 of the code under
//! the same key. Someone holding the database alone can neither read a code
//! nor test guesses offline; with the key too they could derive any code,
//! exactly as they could brute-force a keyed hash of six digits.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use kiln_jobs::UserId;
use sha2::Sha256;
use uuid::Uuid;

use crate::SigningKeyError;

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted (as for URL signing).
pub const MIN_CODE_KEY_LEN: usize = 32;

/// How many digits a verification code has.
pub const CODE_DIGITS: usize = 6;

/// Derives codes, hashes them for storage, and names throttle keys, all
/// under one secret every `serve` and `work` process shares.
#[derive(Clone)]
pub struct CodeKey {
    mac: HmacSha256,
}

/// Never prints the key.
impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey { key: <redacted> }")
    }
}

impl CodeKey {
    /// Refuses keys shorter than [`MIN_CODE_KEY_LEN`] bytes.
    pub fn new(key: Vec<u8>) -> Result<CodeKey, SigningKeyError> {
        if key.len() < MIN_CODE_KEY_LEN {
            return Err(SigningKeyError(format!(
                "verification code key is {} bytes, need at least {MIN_CODE_KEY_LEN}",
                key.len()
            )));
        }
        let mac = HmacSha256::new_from_slice(&key)
            .map_err(|e| SigningKeyError(format!("verification code key rejected: {e}")))?;
        Ok(CodeKey { mac })
    }

    /// The embedded default's key, generated into `path` on first start
    /// and reused, the way the URL-signing key is (`key_file`).
    pub fn load_or_create(path: &Path) -> Result<CodeKey, SigningKeyError> {
        let key = crate::key_file::load_or_create(path, "verification code key")?;
        CodeKey::new(key).map_err(|e| SigningKeyError(format!("{}: {e}", path.display())))
    }

    /// A key for tests and throwaway processes: random, never written down.
    pub fn random() -> CodeKey {
        let key: [u8; MIN_CODE_KEY_LEN] = rand::random();
        match CodeKey::new(key.to_vec()) {
            Ok(key) => key,
            // 32 bytes always meet the minimum.
            Err(e) => unreachable!("a 32-byte key was refused: {e}"),
        }
    }

    fn keyed(&self, purpose: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(purpose);
        mac.update(b"\0");
        mac
    }

    /// The six-digit code of the code row `code_id`: the first 8 bytes of
    /// an HMAC as a number, modulo 10^6 (the bias is below 10^-13).
    pub fn code(&self, code_id: Uuid) -> String {
        let mut mac = self.keyed(b"kiln verification code");
        mac.update(code_id.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        let n = u64::from_be_bytes(first) % 10u64.pow(CODE_DIGITS as u32);
        format!("{n:0width$}", width = CODE_DIGITS)
    }

    /// What the database keeps of a code given for `user_id`: the hex
    /// HMAC of both. Comparing hashes is how a guess is checked.
    pub fn code_hash(&self, user_id: UserId, code: &str) -> String {
        let mut mac = self.keyed(b"kiln verification code hash");
        mac.update(user_id.0.as_bytes());
        mac.update(code.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A name for `subject` (an email or phone) that a rate limiter can
    /// key on without holding the address itself.
    pub fn pseudonym(&self, scope: &str, subject: &str) -> String {
        let mut mac = self.keyed(b"kiln pseudonym");
        mac.update(scope.as_bytes());
        mac.update(b"\0");
        mac.update(subject.as_bytes());
        // 128 bits are plenty for a key; shorter keys, less memory.
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(byte: u8) -> CodeKey {
        CodeKey::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn codes_are_six_digits_fixed_per_id_and_key() {
        let id = Uuid::now_v7();
        let code = key(1).code(id);
        assert_eq!(code.len(), 6);
        assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
        assert_eq!(key(1).code(id), code);
        let others: std::collections::BTreeSet<String> =
            (0..50).map(|_| key(1).code(Uuid::now_v7())).collect();
        assert!(others.len() > 45, "codes vary by id: {others:?}");
        let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        let a: Vec<String> = ids.iter().map(|i| key(1).code(*i)).collect();
        let b: Vec<String> = ids.iter().map(|i| key(2).code(*i)).collect();
        assert_ne!(a, b, "another key, other codes");
    }

    #[test]
    fn hashes_bind_the_user_and_the_code() {
        let (ada, bob) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
        let k = key(1);
        let h = k.code_hash(ada, "123456");
        assert_eq!(h.len(), 64);
        assert_eq!(k.code_hash(ada, "123456"), h);
        assert_ne!(k.code_hash(ada, "123457"), h);
        assert_ne!(k.code_hash(bob, "123456"), h);
        assert_ne!(key(2).code_hash(ada, "123456"), h);
        assert!(!h.contains("123456"));
    }

    #[test]
    fn pseudonyms_hide_the_subject() {
        let k = key(1);
        let p = k.pseudonym("resend", "ada@example.com");
        assert_eq!(p, k.pseudonym("resend", "ada@example.com"));
        assert_ne!(p, k.pseudonym("login", "ada@example.com"));
        assert_ne!(p, key(2).pseudonym("resend", "ada@example.com"));
        assert!(!p.contains("ada"));
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(CodeKey::new(vec![1; 31]).is_err());
        assert_eq!(format!("{:?}", key(0xab)), "CodeKey { key: <redacted> }");
    }

    #[test]
    fn the_key_file_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("code.key");
        let first = CodeKey::load_or_create(&path).unwrap();
        let second = CodeKey::load_or_create(&path).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(first.code(id), second.code(id));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
