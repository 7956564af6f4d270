//! The job catalogue: every kind of job kiln runs, as typed payloads with
//! their queue, attempts, timeout and priority beside them. No I/O here.

mod account_purge;
mod backoff;
pub mod catalogue;
mod data_export;
mod deliver_webhook;
mod error;
mod generate_image;
mod ids;
mod job;
mod locale;
mod notice;
mod notify_users;
mod operator_export;
mod probe;
mod retention_purge;
mod send_notice;
mod text;
mod upscale_image;

pub use account_purge::{AccountPurge, AccountPurgeResult};
pub use backoff::Backoff;
pub use catalogue::{KINDS, KindSpec, Policy, spec};
pub use data_export::{DataExport, DataExportResult};
pub use deliver_webhook::{DeliverWebhook, WebhookDelivered, WebhookEvent, WebhookEvents};
pub use error::{DecodeError, JobError};
pub use generate_image::{
    FollowUps, GenerateImage, GenerateImageResult, GeneratedImage, UpscaleEach, stage,
};
pub use ids::{OrderId, UserId};
pub use job::{Job, decode};
pub use locale::{Locale, LocalizedText};
pub use notice::{Notice, escape_html};
pub use notify_users::{Broadcast, NotifyUsers, NotifyUsersResult};
pub use operator_export::{
    OPERATOR_EXPORTS, OperatorExport, OperatorExportKind, OperatorExportResult,
};
pub use probe::{Probe, ProbeFailure, ProbeResult};
pub use retention_purge::{DataClass, RetentionPurge, RetentionPurgeResult, RetentionSettings};
pub use send_notice::{NoticeSent, SendEmail, SendSms};
pub use text::is_invisible;
pub use upscale_image::{UpscaleImage, UpscaleImageResult};
