use std::time::Duration;

use crate::JobState;

/// What becomes of a job whose worker was lost.
pub(crate) struct RescueDecision {
    pub state: JobState,
    pub retry_in: Option<Duration>,
    pub code: &'static str,
    pub message: String,
}

pub(crate) fn rescue_decision(
    kind: &str,
    attempt: u32,
    max_attempts: u32,
    rescues: u32,
    crash_cap: u32,
    cancel_requested: bool,
) -> RescueDecision {
    if cancel_requested {
        return RescueDecision {
            state: JobState::Cancelled,
            retry_in: None,
            code: "cancelled",
            message: "cancelled; its worker was lost before it stopped".into(),
        };
    }
    if rescues >= crash_cap {
        return RescueDecision {
            state: JobState::Failed,
            retry_in: None,
            code: "crash_loop",
            message: format!("worker lost {rescues} times while running this job; not retried"),
        };
    }
    if attempt >= max_attempts {
        return RescueDecision {
            state: JobState::Failed,
            retry_in: None,
            code: "lease_expired",
            message: "worker lost (lease expired) on the last attempt".into(),
        };
    }
    let backoff = kiln_jobs::catalogue::policy(kind)
        .map_or(kiln_jobs::catalogue::UNKNOWN_KIND_BACKOFF, |p| p.backoff);
    RescueDecision {
        state: JobState::Retryable,
        retry_in: Some(backoff.delay(attempt)),
        code: "lease_expired",
        message: "worker lost (lease expired); retrying".into(),
    }
}
