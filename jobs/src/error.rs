use std::time::Duration;

/// Why a handler's attempt did not succeed. The variant decides what the
/// queue does next: `Transient` retries with backoff (or after the
/// provider's `Retry-After`), `Permanent` fails the job at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("{code}: {message}")]
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl JobError {
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Transient {
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            JobError::Transient { code, .. } | JobError::Permanent { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            JobError::Transient { message, .. } | JobError::Permanent { message, .. } => message,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, JobError::Permanent { .. })
    }
}

/// A stored payload that cannot become its job type. Always permanent: the
/// same bytes will not decode on the next attempt either.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    #[error("{kind} payload does not decode: {reason}")]
    Payload { kind: &'static str, reason: String },
    #[error("{kind} payload has schema version {version}, this build reads up to {current}")]
    UnsupportedVersion {
        kind: &'static str,
        version: i32,
        current: i32,
    },
}

impl From<DecodeError> for JobError {
    fn from(e: DecodeError) -> Self {
        let code = match e {
            DecodeError::UnknownKind(_) => "unknown_kind",
            _ => "undecodable_payload",
        };
        JobError::permanent(code, e.to_string())
    }
}
