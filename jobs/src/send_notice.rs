use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Backoff, Job, Notice, UserId};

/// Emails a notice to a user. The payload names the user, not the address:
/// the handler reads the address when it sends, so no contact data waits
/// in the jobs table and a changed address is used at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    pub user_id: UserId,
    pub notice: Notice,
}

impl Job for SendEmail {
    type Result = NoticeSent;
    const KIND: &'static str = "send_email";
    const QUEUE: &'static str = "notifications";
    const MAX_ATTEMPTS: u32 = 8;
    const TIMEOUT: Duration = Duration::from_secs(60);
    // A code someone is waiting for goes before queued work.
    const PRIORITY: i16 = 10;
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(300),
    };
}

/// Texts a notice to a user's phone; like [`SendEmail`], by user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendSms {
    pub user_id: UserId,
    pub notice: Notice,
}

impl Job for SendSms {
    type Result = NoticeSent;
    const KIND: &'static str = "send_sms";
    const QUEUE: &'static str = "notifications";
    const MAX_ATTEMPTS: u32 = 8;
    const TIMEOUT: Duration = Duration::from_secs(60);
    const PRIORITY: i16 = 10;
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(300),
    };
}

/// A notice handed to its provider (`send_email`, `send_sms`): which
/// provider, and the id it gave the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeSent {
    pub provider: String,
    pub provider_id: String,
}
