use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Job, Notice};

/// Fans a notice out to many accounts: one `send_email` or `send_sms` per
/// account, queued in bounded batches. Each batch records its recipients
/// in the transaction that queues their notices, so a fan-out killed and
/// run again goes on where it stopped and notifies nobody twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyUsers {
    pub broadcast: Broadcast,
}

/// What goes out, and so to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Broadcast {
    /// A published policy version: to every verified account that is not
    /// deleted or restricted (a restricted account gets only the notices
    /// the law requires).
    Policy { version: String },
    /// A security notice: to the accounts it names, or to every verified
    /// account, restricted ones too.
    Security { notice_id: Uuid },
}

impl Broadcast {
    /// The name its recipients are recorded under.
    pub fn key(&self) -> String {
        match self {
            Broadcast::Policy { version } => format!("policy:{version}"),
            Broadcast::Security { notice_id } => format!("security:{notice_id}"),
        }
    }

    /// The notice each recipient's job carries, in its queued form: the
    /// sender reads the text in the reader's language when it sends.
    pub fn notice(&self) -> Notice {
        match self {
            Broadcast::Policy { version } => Notice::PolicyVersion {
                version: version.clone(),
            },
            Broadcast::Security { notice_id } => Notice::SecurityIncident {
                notice_id: *notice_id,
            },
        }
    }
}

impl Job for NotifyUsers {
    type Result = NotifyUsersResult;
    const KIND: &'static str = "notify_users";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: u32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(3600);
}

/// What a fan-out queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyUsersResult {
    /// Notices this run queued (an earlier, interrupted run's are not
    /// counted again).
    pub queued: u64,
    /// Every recipient the notice has, across runs.
    pub recipients: u64,
}
