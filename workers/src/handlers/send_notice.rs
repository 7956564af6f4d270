//! `send_email` and `send_sms`: look the address up when sending (the
//! payload holds only the user id), render the notice, hand it to the
//! configured provider. A user without that contact, or deleted, ends the
//! job at once: retrying cannot make an address appear.
//!
//! An account's verification code waits in the queue as its row's id
//! (`Notice::AccountVerification`); the code is derived here, under the
//! server's code key, just before sending, and is never written anywhere
//! but the message. A code that was used, replaced or expired meanwhile
//! is not sent.
//!
//! Every notice goes out in the account's language (`locale`); a policy
//! or security notice waits in the queue by name and is read, in that
//! language, when it is sent.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use kiln_jobs::{DataExport, JobError, Locale, Notice, NoticeSent, SendEmail, SendSms, UserId};
use kiln_store::{
    CodeKey, Objects,
    accounts::{Contacts, Identifier},
};
use uuid::Uuid;

use super::ObjectLinks;

use crate::{Handler, JobContext, Outcome};
use kiln_providers::{
    email::{EmailMessage, Mailer},
    sms::SmsSender,
};

pub struct SendEmailHandler {
    pub mailer: Arc<dyn Mailer>,
    pub product_name: String,
    /// Derives account verification codes.
    pub codes: Arc<CodeKey>,
    pub exports: ExportLinks,
}

pub struct SendSmsHandler {
    pub sms: Arc<dyn SmsSender>,
    pub product_name: String,
    pub codes: Arc<CodeKey>,
    pub exports: ExportLinks,
}

/// How an export-ready notice links to the ZIP.
#[derive(Clone)]
pub struct ExportLinks {
    /// Signed links for the export's life (`api.export_link_ttl_secs`, at
    /// most `retention.export_days`); only absolute ones
    /// (`storage.public_base_url` set) go into a message, since a path
    /// means nothing in a mailbox. Without one, the notice points at
    /// `GET /v1/me/exports/{id}`, which signs a link when asked.
    pub links: ObjectLinks,
    pub objects: Objects,
}

impl ExportLinks {
    /// An export's notice with its link signed now, when one can be made;
    /// an export whose file is gone (retention, deletion) is not announced.
    async fn ready(&self, user_id: UserId, export_id: Uuid) -> Result<Notice, JobError> {
        let key = DataExport::object_key(user_id, export_id);
        if !self.objects.exists(&key).await? {
            return Err(JobError::permanent(
                "export_gone",
                "the export's file was removed before it could be announced",
            ));
        }
        if self.links.public_base_url.is_none() {
            return Ok(Notice::ExportFinished { export_id });
        }
        let (url, expires) = self.links.url_until(&key);
        Ok(Notice::ExportReady {
            url,
            expires_at: expires.format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }
}

/// The notice with its code derived, when it is a verification code that
/// can still be used, and the new address the code confirms (it goes
/// there, not to the account's current one); a dead code ends the job
/// (`code_not_live`): sending it would only mislead.
async fn ready(
    ctx: &JobContext,
    codes: &CodeKey,
    exports: &ExportLinks,
    user_id: UserId,
    notice: Notice,
    locale: Locale,
) -> Result<(Notice, Option<Identifier>), JobError> {
    let mut pending = None;
    if let Notice::AccountVerification { code_id, .. } = &notice {
        let live = ctx
            .store()
            .codes(user_id)
            .await?
            .into_iter()
            .find(|c| c.id == *code_id && c.is_live(Utc::now()));
        let Some(code) = live else {
            return Err(JobError::permanent(
                "code_not_live",
                "the verification code was used, replaced or expired before it could be sent",
            ));
        };
        pending = code.contact;
    }
    let notice = match notice {
        Notice::NewLoginEntry { entry_id } => sign_in(ctx, user_id, entry_id).await?,
        Notice::ExportFinished { export_id } => exports.ready(user_id, export_id).await?,
        Notice::PolicyVersion { version } => policy(ctx, &version, locale).await?,
        Notice::SecurityIncident { notice_id } => security(ctx, notice_id, locale).await?,
        other => other.with_code(|id| codes.code(id)),
    };
    Ok((notice, pending))
}

/// A published policy version, with its summary in the reader's language.
async fn policy(ctx: &JobContext, version: &str, locale: Locale) -> Result<Notice, JobError> {
    let v = ctx
        .store()
        .policy_version(version)
        .await?
        .ok_or_else(|| JobError::permanent("policy_missing", "the policy version is gone"))?;
    Ok(Notice::PolicyNotice {
        version: v.version,
        effective_on: v.effective_at.format("%Y-%m-%d").to_string(),
        summary: v.summary.get(locale).to_owned(),
    })
}

/// A recorded security notice, in the reader's language.
async fn security(ctx: &JobContext, id: Uuid, locale: Locale) -> Result<Notice, JobError> {
    let n = ctx
        .store()
        .security_notice(id)
        .await?
        .ok_or_else(|| JobError::permanent("notice_missing", "the security notice is gone"))?;
    Ok(Notice::SecurityNotice {
        subject: n.subject.get(locale).to_owned(),
        body: n.body.get(locale).to_owned(),
    })
}

/// The sign-in an access-log entry records, as the notice shows it.
async fn sign_in(ctx: &JobContext, user_id: UserId, entry_id: i64) -> Result<Notice, JobError> {
    let entry = ctx
        .store()
        .access_log(user_id, entry_id.checked_add(1), 1)
        .await?
        .into_iter()
        .find(|e| e.id == entry_id)
        .ok_or_else(|| {
            JobError::permanent("entry_missing", "the sign-in's access-log entry is gone")
        })?;
    let unknown = || "unknown".to_owned();
    Ok(Notice::NewLogin {
        at: entry.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        ip: entry.ip.unwrap_or_else(unknown),
        user_agent: entry.user_agent.unwrap_or_else(unknown),
    })
}

fn unrendered() -> JobError {
    JobError::permanent("notice_unrendered", "the notice could not be rendered")
}

async fn contacts(ctx: &JobContext, user_id: kiln_jobs::UserId) -> Result<Contacts, JobError> {
    ctx.store()
        .contacts(user_id)
        .await?
        .ok_or_else(|| JobError::permanent("user_missing", "the user no longer exists"))
}

#[async_trait]
impl Handler<SendEmail> for SendEmailHandler {
    async fn run(&self, job: SendEmail, ctx: &JobContext) -> Result<Outcome<NoticeSent>, JobError> {
        let contacts = contacts(ctx, job.user_id).await?;
        let locale = contacts.locale;
        let (notice, pending) = ready(
            ctx,
            &self.codes,
            &self.exports,
            job.user_id,
            job.notice,
            locale,
        )
        .await?;
        let to = match pending {
            Some(Identifier::Email(new)) => new,
            _ => contacts
                .email
                .ok_or_else(|| JobError::permanent("no_email", "the user has no email address"))?,
        };
        let (subject, text, html) = notice
            .email(&self.product_name, locale)
            .ok_or_else(unrendered)?;
        let sent = self
            .mailer
            .send(&EmailMessage {
                to,
                subject,
                text,
                html: Some(html),
                idempotency_key: Some(ctx.job_id().to_string()),
            })
            .await?;
        Ok(Outcome::Done(NoticeSent {
            provider: self.mailer.name().to_owned(),
            provider_id: sent.provider_id,
        }))
    }
}

#[async_trait]
impl Handler<SendSms> for SendSmsHandler {
    async fn run(&self, job: SendSms, ctx: &JobContext) -> Result<Outcome<NoticeSent>, JobError> {
        let contacts = contacts(ctx, job.user_id).await?;
        let locale = contacts.locale;
        let (notice, pending) = ready(
            ctx,
            &self.codes,
            &self.exports,
            job.user_id,
            job.notice,
            locale,
        )
        .await?;
        let to = match pending {
            Some(Identifier::Phone(new)) => new,
            _ => contacts
                .phone
                .ok_or_else(|| JobError::permanent("no_phone", "the user has no phone number"))?,
        };
        let body = notice
            .sms(&self.product_name, locale)
            .ok_or_else(unrendered)?;
        let sent = self.sms.send(&to, &body).await?;
        Ok(Outcome::Done(NoticeSent {
            provider: self.sms.name().to_owned(),
            provider_id: sent.provider_id,
        }))
    }
}
