//! The one error every provider call returns, and how it becomes a job
//! error.

use std::time::Duration;

use kiln_jobs::JobError;

/// A provider call that did not produce an answer. The variant is the
/// retry decision, made where the wire format is understood: `Transient`
/// (429 rate limit, 408/409/5xx, timeouts, resets) retries, honouring the
/// provider's `Retry-After`; `Permanent` (bad input, content blocked, quota
/// exhausted, auth) fails the job at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("{code}: {message}")]
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl ProviderError {
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Transient {
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            ProviderError::Transient { code, .. } | ProviderError::Permanent { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ProviderError::Transient { message, .. } | ProviderError::Permanent { message, .. } => {
                message
            }
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, ProviderError::Permanent { .. })
    }
}

/// One to one: the provider already decided whether retrying can help.
impl From<ProviderError> for JobError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Transient {
                code,
                message,
                retry_after,
            } => JobError::Transient {
                code,
                message,
                retry_after,
            },
            ProviderError::Permanent { code, message } => JobError::Permanent { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_keep_their_retry_decision_as_job_errors() {
        let transient = ProviderError::Transient {
            code: "rate_limit_exceeded".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            JobError::from(transient),
            JobError::Transient {
                code: "rate_limit_exceeded".into(),
                message: "slow down".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }
        );

        let permanent = ProviderError::permanent("content_blocked", "moderation_blocked");
        let job: JobError = permanent.into();
        assert!(job.is_permanent());
        assert_eq!(job.code(), "content_blocked");
        assert_eq!(job.message(), "moderation_blocked");
    }

    #[test]
    fn error_display_is_code_and_message() {
        let e = ProviderError::transient("server_error", "502 from upstream");
        assert_eq!(e.to_string(), "server_error: 502 from upstream");
        assert_eq!(e.code(), "server_error");
    }
}
