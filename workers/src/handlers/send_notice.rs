//! `send_email` and `send_sms`: look the address up when sending (the
//! payload holds only the user id), render the notice, hand it to the
//! configured provider. A user without that contact, or deleted, ends the
//! job at once: retrying cannot make an address appear.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_jobs::{JobError, NoticeSent, SendEmail, SendSms};
use kiln_store::accounts::Contacts;

use crate::{Handler, JobContext, Outcome};
use kiln_providers::{
    email::{EmailMessage, Mailer},
    sms::SmsSender,
};

pub struct SendEmailHandler {
    pub mailer: Arc<dyn Mailer>,
    pub product_name: String,
}

pub struct SendSmsHandler {
    pub sms: Arc<dyn SmsSender>,
    pub product_name: String,
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
        let to = contacts(ctx, job.user_id)
            .await?
            .email
            .ok_or_else(|| JobError::permanent("no_email", "the user has no email address"))?;
        let (subject, text, html) = job.notice.email(&self.product_name);
        let sent = self
            .mailer
            .send(&EmailMessage {
                to,
                subject,
                text,
                html: Some(html),
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
        let to = contacts(ctx, job.user_id)
            .await?
            .phone
            .ok_or_else(|| JobError::permanent("no_phone", "the user has no phone number"))?;
        let sent = self
            .sms
            .send(&to, &job.notice.sms(&self.product_name))
            .await?;
        Ok(Outcome::Done(NoticeSent {
            provider: self.sms.name().to_owned(),
            provider_id: sent.provider_id,
        }))
    }
}
