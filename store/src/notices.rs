//! Notices to many accounts at once: policy versions (announced at least
//! [`POLICY_NOTICE_DAYS`] ahead, shown as pending until each owner
//! acknowledges them) and security notices (the 72-hour breach notice),
//! each fanned out by a `notify_users` job that records its recipients in
//! the transaction that queues their notices.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{Broadcast, LocalizedText, SendEmail, SendSms, UserId};
use uuid::Uuid;

use crate::{NewJob, StoreError};

/// Days a policy version must be published ahead of taking effect.
pub const POLICY_NOTICE_DAYS: i64 = 7;

/// A policy version as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: String,
    pub effective_at: DateTime<Utc>,
    pub summary: LocalizedText,
    pub published_at: DateTime<Utc>,
}

/// The policy in force at a time and the next one announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The latest version in effect; none before the first takes effect.
    pub current: Option<PolicyVersion>,
    /// The next version to take effect, if one is announced.
    pub pending: Option<PolicyVersion>,
}

impl PolicyState {
    /// Where `versions` stand at `now`.
    pub fn at(versions: Vec<PolicyVersion>, now: DateTime<Utc>) -> PolicyState {
        let (in_effect, announced): (Vec<_>, Vec<_>) =
            versions.into_iter().partition(|v| v.effective_at <= now);
        PolicyState {
            current: in_effect.into_iter().max_by_key(|v| v.effective_at),
            pending: announced.into_iter().min_by_key(|v| v.effective_at),
        }
    }
}

/// A security notice as recorded: what it said and when it went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityNotice {
    pub id: Uuid,
    pub subject: LocalizedText,
    pub body: LocalizedText,
    /// To every verified account; otherwise to the accounts it names.
    pub everyone: bool,
    pub created_at: DateTime<Utc>,
    /// Its `notify_users` fan-out.
    pub job_id: Option<Uuid>,
}

/// What one fan-out batch queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOutBatch {
    pub emails: u64,
    pub sms: u64,
    /// No account was left to notify.
    pub done: bool,
}

impl FanOutBatch {
    pub fn queued(self) -> u64 {
        self.emails + self.sms
    }
}

#[async_trait]
pub trait Notices: Send + Sync + 'static {
    /// Stores a policy version and queues its fan-out in one transaction;
    /// None when a version of that name exists (nothing is stored).
    async fn publish_policy(
        &self,
        version: &PolicyVersion,
        fan_out: NewJob,
    ) -> Result<Option<Uuid>, StoreError>;
    /// Every version, newest published first (a handful, never many).
    async fn policy_versions(&self) -> Result<Vec<PolicyVersion>, StoreError>;
    async fn policy_version(&self, version: &str) -> Result<Option<PolicyVersion>, StoreError>;
    /// The newest version published after the account was created that
    /// its owner has not acknowledged (nor a later one).
    async fn pending_policy(&self, user: UserId) -> Result<Option<PolicyVersion>, StoreError>;
    /// Records that the owner read `version` (acknowledging an older one
    /// than they did already changes nothing): false when there is no such
    /// version.
    async fn acknowledge_policy(&self, user: UserId, version: &str) -> Result<bool, StoreError>;

    /// Stores a security notice, the accounts it names (none: everyone)
    /// and its fan-out, in one transaction; the fan-out's id.
    async fn record_security_notice(
        &self,
        notice: &SecurityNotice,
        audience: &[UserId],
        fan_out: NewJob,
    ) -> Result<Uuid, StoreError>;
    async fn security_notice(&self, id: Uuid) -> Result<Option<SecurityNotice>, StoreError>;

    /// Queues the broadcast's notice for up to `limit` more recipients, in
    /// account order after the last one recorded, each recorded with its
    /// job in one transaction (a recipient recorded already, by a run that
    /// raced this one, is skipped); `done` once nobody is left.
    /// None when the security notice it names is gone.
    async fn fan_out(
        &self,
        broadcast: &Broadcast,
        limit: u32,
    ) -> Result<Option<FanOutBatch>, StoreError>;
    /// How many accounts a broadcast was queued for.
    async fn recipients(&self, broadcast: &Broadcast) -> Result<u64, StoreError>;
}

/// Who a broadcast goes to, besides "verified and not deleted".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Audience {
    /// Restricted accounts too (notices the law requires).
    pub restricted_too: bool,
    /// Only the accounts `notice_audience` names for it.
    pub listed: bool,
}

impl Audience {
    pub(crate) const POLICY: Audience = Audience {
        restricted_too: false,
        listed: false,
    };

    pub(crate) fn security(everyone: bool) -> Audience {
        Audience {
            restricted_too: true,
            listed: !everyone,
        }
    }
}

/// The job that takes a broadcast's notice to one account, by email where
/// it has an address, else by SMS. A system job (no owner), like every
/// notice: the account's erasure deletes it by the user in its payload.
pub(crate) fn notice_job(
    broadcast: &Broadcast,
    user_id: UserId,
    by_email: bool,
) -> Result<NewJob, StoreError> {
    let notice = broadcast.notice();
    if by_email {
        NewJob::of(&SendEmail { user_id, notice })
    } else {
        NewJob::of(&SendSms { user_id, notice })
    }
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Parses a stored localized text.
pub(crate) fn text(json: &str) -> Result<LocalizedText, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("localized text: {e}")))
}

pub(crate) fn json(text: &LocalizedText) -> String {
    // A struct of strings always serializes.
    serde_json::to_string(text).unwrap_or_default()
}

/// Counts a batch's jobs by channel.
pub(crate) fn count(jobs: &[NewJob]) -> FanOutBatch {
    let emails = jobs
        .iter()
        .filter(|j| j.kind == <SendEmail as kiln_jobs::Job>::KIND)
        .count() as u64;
    FanOutBatch {
        emails,
        sms: jobs.len() as u64 - emails,
        done: false,
    }
}

pub(crate) const POLICY_COLUMNS: &str = "version, effective_at, summary, published_at";

#[derive(sqlx::FromRow)]
pub(crate) struct PolicyRow {
    version: String,
    effective_at: crate::codec::Time,
    summary: String,
    published_at: crate::codec::Time,
}

impl TryFrom<PolicyRow> for PolicyVersion {
    type Error = StoreError;

    fn try_from(r: PolicyRow) -> Result<PolicyVersion, StoreError> {
        Ok(PolicyVersion {
            version: r.version,
            effective_at: r.effective_at.0,
            summary: text(&r.summary)?,
            published_at: r.published_at.0,
        })
    }
}

pub(crate) const SECURITY_COLUMNS: &str = "id, subject, body, everyone, created_at, job_id";

#[derive(sqlx::FromRow)]
pub(crate) struct SecurityRow {
    id: crate::codec::Id,
    subject: String,
    body: String,
    everyone: bool,
    created_at: crate::codec::Time,
    job_id: Option<crate::codec::Id>,
}

impl TryFrom<SecurityRow> for SecurityNotice {
    type Error = StoreError;

    fn try_from(r: SecurityRow) -> Result<SecurityNotice, StoreError> {
        Ok(SecurityNotice {
            id: r.id.0,
            subject: text(&r.subject)?,
            body: text(&r.body)?,
            everyone: r.everyone,
            created_at: r.created_at.0,
            job_id: r.job_id.map(|j| j.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn version(name: &str, effective_at: DateTime<Utc>) -> PolicyVersion {
        PolicyVersion {
            version: name.into(),
            effective_at,
            summary: LocalizedText::same("s"),
            published_at: effective_at - TimeDelta::days(8),
        }
    }

    #[test]
    fn the_current_version_is_the_latest_in_effect_and_the_pending_the_next() {
        let now = Utc::now();
        let state = PolicyState::at(
            vec![
                version("1", now - TimeDelta::days(40)),
                version("2", now - TimeDelta::days(1)),
                version("4", now + TimeDelta::days(20)),
                version("3", now + TimeDelta::days(9)),
            ],
            now,
        );
        assert_eq!(state.current.map(|v| v.version).as_deref(), Some("2"));
        assert_eq!(state.pending.map(|v| v.version).as_deref(), Some("3"));
        assert_eq!(PolicyState::at(Vec::new(), now), PolicyState::default());
    }
}
