use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Backoff, DecodeError};

/// A kind of job: the payload type plus the policy that travels with it.
///
/// The payload is a wire format kept in the `jobs` table: ids, not rows. Its
/// `KIND` is a stable name (never a Rust path) so jobs already queued still
/// run after a deploy; a payload change bumps `SCHEMA_VERSION` and teaches
/// [`Job::upgrade`] to read the old shape.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What a finished job of this kind leaves as its `result`: the JSON
    /// clients read back, so its shape is as stable as the payload's.
    type Result: Serialize + DeserializeOwned + Send + 'static;

    const KIND: &'static str;
    const QUEUE: &'static str = "default";
    /// Attempts before the job ends `failed`, counting the first run.
    const MAX_ATTEMPTS: u32 = 5;
    /// How long one attempt may run before it counts as a failed attempt.
    const TIMEOUT: Duration = Duration::from_secs(60);
    /// Higher runs first within a queue.
    const PRIORITY: i16 = 0;
    const BACKOFF: Backoff = Backoff::DEFAULT;
    const SCHEMA_VERSION: i32 = 1;

    /// Reads a payload written under an older schema version. The default
    /// knows only the current one.
    fn upgrade(version: i32, _payload: serde_json::Value) -> Result<Self, DecodeError> {
        Err(DecodeError::UnsupportedVersion {
            kind: Self::KIND,
            version,
            current: Self::SCHEMA_VERSION,
        })
    }
}

/// Decodes a stored payload of kind `J`, upgrading older schema versions.
pub fn decode<J: Job>(version: i32, payload: serde_json::Value) -> Result<J, DecodeError> {
    if version == J::SCHEMA_VERSION {
        serde_json::from_value(payload).map_err(|e| DecodeError::Payload {
            kind: J::KIND,
            reason: e.to_string(),
        })
    } else {
        J::upgrade(version, payload)
    }
}
