//! Secret keys kept in files on the embedded default: generated on first
//! start (32 random bytes, hex, file mode 0600) and read back on later
//! starts. The URL-signing key, the verification-code key and the dev
//! payments provider's signing secret live this way, each in a file of
//! its own.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::SigningKeyError;

/// The length of a generated key: as long as the SHA-256 output, below
/// which HMAC's strength drops with the key's.
pub const GENERATED_KEY_LEN: usize = 32;

/// The key in `path`, made there first if the file does not exist. Several
/// processes starting at once agree on one key: the file appears
/// atomically, complete, or not at all. `what` names the key in warnings
/// and errors (`url signing key`).
pub fn load_or_create(path: &Path, what: &str) -> Result<Vec<u8>, SigningKeyError> {
    match read_key(path, what)? {
        Some(key) => Ok(key),
        None => create_key(path, what),
    }
}

fn read_key(path: &Path, what: &str) -> Result<Option<Vec<u8>>, SigningKeyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_error(what, path, "read", e)),
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "{what} is readable by other users; chmod 600 it"
        );
    }
    hex::decode(text.trim())
        .map(Some)
        .map_err(|e| SigningKeyError(format!("{what}: {} is not hex: {e}", path.display())))
}

/// Writes the key to a private temporary file, then hard-links it into
/// place: the link fails if another process got there first, and then its
/// key wins.
fn create_key(path: &Path, what: &str) -> Result<Vec<u8>, SigningKeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| key_error(what, dir, "create", e))?;
    }
    let key: [u8; GENERATED_KEY_LEN] = rand::random();
    let tmp = path.with_extension(format!("tmp.{}", hex::encode(rand::random::<[u8; 8]>())));

    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&tmp, path));
    // The temporary name is gone whatever happened; a failure to remove it
    // only leaves a stray file.
    let _ = std::fs::remove_file(&tmp);

    match written {
        Ok(()) => Ok(key.to_vec()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(path, what)?.ok_or_else(|| {
            SigningKeyError(format!(
                "{what}: {} vanished while starting",
                path.display()
            ))
        }),
        Err(e) => Err(key_error(what, path, "write", e)),
    }
}

fn key_error(what: &str, path: &Path, op: &str, e: std::io::Error) -> SigningKeyError {
    SigningKeyError(format!("{what}: {op} {}: {e}", path.display()))
}
