//! Personal data at rest: every email address and phone number is kept
//! sealed with AES-256-GCM under a key with an id (so keys rotate: a row
//! names the key that sealed it), and found by a blind index, an
//! HMAC-SHA256 of the normalised address under a separate index key that
//! never rotates (so lookups and uniqueness keep working across
//! rotations). The database, its dumps and its logs hold neither the
//! addresses nor anything that reverses to them without the keys.
//!
//! Keys come from the configuration (`[encryption]`, shared by every
//! process) or, on the embedded default, from files under
//! `data/pii-keys/` made on first start: `index.key` and one `k<N>.key`
//! per sealing key, the highest N sealing new data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit as _, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{SigningKeyError, StoreError, accounts::Identifier, key_file};

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 12;

/// The sealing keys by id, the one that seals new data, and the index key.
#[derive(Clone)]
pub struct Pii {
    keys: BTreeMap<String, Aes256Gcm>,
    current: String,
    index: HmacSha256,
}

/// Never prints a key.
impl std::fmt::Debug for Pii {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pii")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

fn key_error(text: impl Into<String>) -> SigningKeyError {
    SigningKeyError(text.into())
}

impl Pii {
    /// `keys` by id (32 bytes each), `current` the id that seals new data,
    /// `index_key` at least 32 bytes.
    pub fn new(
        index_key: &[u8],
        current: &str,
        keys: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Pii, SigningKeyError> {
        if index_key.len() < 32 {
            return Err(key_error(
                "the personal-data index key must hold 32 bytes or more",
            ));
        }
        let mut ring = BTreeMap::new();
        for (id, key) in keys {
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_id {
                return Err(key_error(format!(
                    "personal-data key id {id:?}: 1 to 32 letters, digits, - or _"
                )));
            }
            if key.len() != 32 {
                return Err(key_error(format!(
                    "personal-data key {id}: an AES-256 key is 32 bytes (64 hex digits)"
                )));
            }
            let cipher = Aes256Gcm::new_from_slice(key)
                .map_err(|_| key_error(format!("personal-data key {id} is unusable")))?;
            ring.insert(id.clone(), cipher);
        }
        if !ring.contains_key(current) {
            return Err(key_error(format!(
                "the current personal-data key {current:?} is not among the keys"
            )));
        }
        Ok(Pii {
            keys: ring,
            current: current.to_owned(),
            index: HmacSha256::new_from_slice(index_key)
                .map_err(|_| key_error("the personal-data index key is unusable"))?,
        })
    }

    /// Fresh random keys: for tests, and nothing that must read its data
    /// back after a restart.
    pub fn random() -> Pii {
        let key: [u8; 32] = rand::random();
        let index: [u8; 32] = rand::random();
        Pii::new(
            &index,
            "k1",
            &BTreeMap::from([("k1".to_owned(), key.to_vec())]),
        )
        .expect("random keys of the right length are valid")
    }

    /// The keys in `dir` (`index.key`, `k1.key`, `k2.key`…; the highest
    /// number seals), made there on first start.
    pub fn load_or_create(dir: &Path) -> Result<Pii, SigningKeyError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| key_error(format!("creating {}: {e}", dir.display())))?;
        let index = key_file::load_or_create(&dir.join("index.key"), "personal-data index key")?;
        let mut numbered = numbered_keys(dir)?;
        if numbered.is_empty() {
            numbered.push((1, dir.join("k1.key")));
        }
        let mut keys = BTreeMap::new();
        let mut current = String::new();
        for (n, path) in &numbered {
            let id = format!("k{n}");
            keys.insert(
                id.clone(),
                key_file::load_or_create(path, "personal-data key")?,
            );
            current = id;
        }
        Pii::new(&index, &current, &keys)
    }

    /// Makes the next sealing key in `dir` (the one after the highest) and
    /// answers its id; loading the directory again then seals with it.
    pub fn add_key_file(dir: &Path) -> Result<String, SigningKeyError> {
        let next = numbered_keys(dir)?.last().map_or(1, |(n, _)| n + 1);
        key_file::load_or_create(&dir.join(format!("k{next}.key")), "personal-data key")?;
        Ok(format!("k{next}"))
    }

    /// The id of the key that seals new data.
    pub fn current_key(&self) -> &str {
        &self.current
    }

    /// `<key id>:<hex of nonce and ciphertext>`; a fresh nonce each time,
    /// so the same address seals differently in every row.
    pub fn seal(&self, plain: &str) -> String {
        let cipher = &self.keys[&self.current];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encrypting into a Vec fails only past 64 GiB of plaintext.
        let sealed = cipher
            .encrypt(&nonce, plain.as_bytes())
            .expect("AES-GCM seals an address");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{}:{}", self.current, hex::encode(bytes))
    }

    /// The plain text of a sealed value, under whichever key sealed it.
    pub fn open(&self, sealed: &str) -> Result<String, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("sealed personal data: {why}"));
        let (id, body) = sealed.split_once(':').ok_or_else(|| corrupt("no key id"))?;
        let cipher = self
            .keys
            .get(id)
            .ok_or_else(|| corrupt(&format!("sealed under key {id:?}, which is not configured")))?;
        let bytes = hex::decode(body).map_err(|_| corrupt("not hex"))?;
        if bytes.len() <= NONCE_LEN {
            return Err(corrupt("too short"));
        }
        let (nonce, text) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt("too short"))?;
        let plain = cipher
            .decrypt(&Nonce::from(nonce), text)
            .map_err(|_| corrupt("the tag does not match (wrong key or altered row)"))?;
        String::from_utf8(plain).map_err(|_| corrupt("not UTF-8"))
    }

    /// Whether a sealed value is under the current key.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed
            .split_once(':')
            .is_some_and(|(id, _)| id == self.current)
    }

    /// The identifier as the database looks it up: its kind, and the
    /// HMAC of its normalised text (the kind is hashed too, so an email
    /// and a phone never share an index).
    pub fn blind(&self, id: &Identifier) -> Identifier {
        let index = |kind: &str, text: &str| {
            let mut mac = self.index.clone();
            mac.update(kind.as_bytes());
            mac.update(&[0]);
            mac.update(text.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        match id {
            Identifier::Email(e) => Identifier::Email(index("email", e)),
            Identifier::Phone(p) => Identifier::Phone(index("phone", p)),
        }
    }

    /// A short digest of the index key, which every process sharing a
    /// database must hold: kept in the database, it lets a process with
    /// other keys refuse to start instead of writing data nobody can find.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.index.clone();
        mac.update(b"kiln personal-data key fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

/// `k<N>.key` files in `dir`, by N.
fn numbered_keys(dir: &Path) -> Result<Vec<(u32, PathBuf)>, SigningKeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(key_error(format!("reading {}: {e}", dir.display()))),
    };
    let mut keys: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|path| {
            let n = path
                .file_name()?
                .to_str()?
                .strip_prefix('k')?
                .strip_suffix(".key")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .collect();
    keys.sort();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sealed_address_opens_and_never_repeats_its_text() {
        let pii = Pii::random();
        let a = pii.seal("ada@example.com");
        let b = pii.seal("ada@example.com");
        assert_ne!(a, b, "a fresh nonce each time");
        // (Not just "ada": hex may spell it by chance.)
        assert!(!a.contains("ada@example.com") && a.starts_with("k1:"));
        assert_eq!(pii.open(&a).unwrap(), "ada@example.com");
        assert!(pii.is_current(&a));
        // An altered byte fails the tag.
        let mut altered = a.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert!(pii.open(&altered).is_err());
        assert!(
            Pii::random().open(&a).is_err(),
            "another key cannot open it"
        );
    }

    #[test]
    fn the_blind_index_is_stable_keyed_and_separates_kinds() {
        let pii = Pii::random();
        let email = Identifier::Email("ada@example.com".into());
        assert_eq!(pii.blind(&email), pii.blind(&email));
        assert_ne!(Pii::random().blind(&email), pii.blind(&email));
        let Identifier::Email(index) = pii.blind(&email) else {
            panic!("an email stays an email")
        };
        assert_eq!(index.len(), 64);
        let as_phone = Identifier::Phone("ada@example.com".into());
        let Identifier::Phone(phone_index) = pii.blind(&as_phone) else {
            panic!()
        };
        assert_ne!(index, phone_index);
    }

    #[test]
    fn key_files_are_made_once_and_rotation_keeps_old_data_readable() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pii::load_or_create(dir.path()).unwrap();
        assert_eq!(first.current_key(), "k1");
        let sealed = first.seal("+4915112345678");
        let again = Pii::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "+4915112345678");
        assert_eq!(again.fingerprint(), first.fingerprint());

        assert_eq!(Pii::add_key_file(dir.path()).unwrap(), "k2");
        let rotated = Pii::load_or_create(dir.path()).unwrap();
        assert_eq!(rotated.current_key(), "k2");
        assert!(!rotated.is_current(&sealed));
        assert_eq!(rotated.open(&sealed).unwrap(), "+4915112345678");
        assert!(rotated.seal("x").starts_with("k2:"));
        // The index key does not rotate: lookups keep working.
        let email = Identifier::Email("ada@example.com".into());
        assert_eq!(rotated.blind(&email), first.blind(&email));
        assert_eq!(rotated.fingerprint(), first.fingerprint());
    }

    #[test]
    fn bad_keys_are_refused_by_name() {
        let index = [1u8; 32];
        let short = BTreeMap::from([("k1".to_owned(), vec![0u8; 16])]);
        assert!(
            Pii::new(&index, "k1", &short)
                .unwrap_err()
                .0
                .contains("32 bytes")
        );
        let good = BTreeMap::from([("k1".to_owned(), vec![0u8; 32])]);
        assert!(Pii::new(&index, "k9", &good).unwrap_err().0.contains("k9"));
        assert!(Pii::new(&[0u8; 8], "k1", &good).is_err());
    }
}
