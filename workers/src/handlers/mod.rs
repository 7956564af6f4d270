//! One handler per job kind, and the list that registers them all.

mod account_purge;
mod data_export;
mod deliver_webhook;
mod generate_image;
mod links;
mod moderation;
mod notify_users;
mod operator_export;
mod probe;
mod retention_purge;
mod send_notice;
mod upscale_image;

use std::sync::Arc;

pub use account_purge::AccountPurgeHandler;
pub use data_export::{DataExportHandler, EXPORT_SCHEMA_VERSION};
pub use deliver_webhook::DeliverWebhookHandler;
pub use generate_image::GenerateImageHandler;
pub use links::ObjectLinks;
pub use notify_users::NotifyUsersHandler;
pub use operator_export::OperatorExportHandler;
pub use probe::ProbeHandler;
pub use retention_purge::RetentionPurgeHandler;
pub use send_notice::{ExportLinks, SendEmailHandler, SendSmsHandler};
pub use upscale_image::UpscaleImageHandler;

use crate::{Clock, Registry};
use kiln_jobs::RetentionSettings;
use kiln_providers::{
    ProviderSettings,
    email::{DEV_FROM, DevMailer, EmailSettings, Mailer},
    fetch::{FetchPolicy, GuardedFetcher},
    images::{DevGenerator, ImageGenerator},
    limits::{DEFAULT_WEBHOOK_LIMIT, LocalLimiter},
    moderation::{DevModerator, Moderator},
    sms::{DevSms, SmsSender, SmsSettings},
    upscale::{DevUpscaler, Upscaler},
    webhook::{WebhookSender, WebhookSettings},
};
use kiln_store::{CodeKey, Objects, UrlSigner};

/// Why the configured providers could not be built; the text names the
/// setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderSetupError(pub String);

/// What handlers need from outside: providers and object storage.
#[derive(Clone)]
pub struct Deps {
    pub generator: Arc<dyn ImageGenerator>,
    pub moderator: Arc<dyn Moderator>,
    pub upscaler: Arc<dyn Upscaler>,
    pub mailer: Arc<dyn Mailer>,
    pub sms: Arc<dyn SmsSender>,
    /// The product's name in notices.
    pub product_name: String,
    pub objects: Objects,
    /// Signed links providers fetch stored images by.
    pub links: ObjectLinks,
    /// Fetches clients' reference images, guarded against SSRF.
    pub fetcher: Arc<GuardedFetcher>,
    /// Delivers clients' webhooks, under the same guard, limited per host.
    pub webhooks: Arc<WebhookSender>,
    /// The server's verification-code key: `send_email` and `send_sms`
    /// derive account codes under it. Every `serve` and `work` process
    /// must share it.
    pub codes: Arc<CodeKey>,
    /// The time handlers go by (the retention purge's cutoffs).
    pub clock: Clock,
    /// How long the link in an export-ready notice works
    /// (`api.export_link_ttl_secs`; never past `retention.export_days`).
    pub export_link_ttl: std::time::Duration,
    /// Accounts per `notify_users` transaction (`worker.notify_batch`).
    pub notify_batch: u32,
    /// Where scheduled exports are announced (`email.operator_address`).
    pub operator_email: Option<String>,
}

/// `worker.notify_batch`'s default.
pub const DEFAULT_NOTIFY_BATCH: u32 = 500;

/// `api.export_link_ttl_secs`' default: a day.
pub const DEFAULT_EXPORT_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Deps {
    /// The providers the settings name, behind the shared rate limits,
    /// over the given storage.
    pub fn from_settings(
        settings: &ProviderSettings,
        objects: Objects,
        links: ObjectLinks,
        codes: Arc<CodeKey>,
    ) -> Result<Deps, ProviderSetupError> {
        let built = settings.build().map_err(ProviderSetupError)?;
        Ok(Deps {
            generator: built.generator,
            moderator: built.moderator,
            upscaler: built.upscaler,
            mailer: built.mailer,
            sms: built.sms,
            product_name: settings.email.product_name.clone(),
            objects,
            links,
            fetcher: built.fetcher,
            webhooks: built.webhooks,
            codes,
            clock: Clock::system(),
            export_link_ttl: DEFAULT_EXPORT_LINK_TTL,
            notify_batch: DEFAULT_NOTIFY_BATCH,
            operator_email: settings.email.operator_address.clone(),
        })
    }

    /// The offline `dev` providers over the given storage; notices go to
    /// the default outbox directory.
    pub fn dev(objects: Objects, blocked_words: Vec<String>) -> Deps {
        let email = EmailSettings::default();
        Deps {
            generator: Arc::new(DevGenerator),
            moderator: Arc::new(DevModerator::new(blocked_words)),
            upscaler: Arc::new(DevUpscaler),
            mailer: Arc::new(DevMailer::new(email.outbox_dir.clone(), DEV_FROM)),
            sms: Arc::new(DevSms::new(SmsSettings::default().outbox_dir)),
            product_name: email.product_name,
            objects,
            // A throwaway key: nothing verifies these links in-process.
            links: ObjectLinks {
                signer: Arc::new(throwaway_signer()),
                public_base_url: None,
                ttl: std::time::Duration::from_secs(600),
            },
            fetcher: Arc::new(GuardedFetcher::new(FetchPolicy::default())),
            webhooks: Arc::new(WebhookSender::new(
                &WebhookSettings::default(),
                Arc::new(LocalLimiter::new(
                    [("webhooks".to_owned(), DEFAULT_WEBHOOK_LIMIT)].into(),
                )),
            )),
            // A throwaway key too: swap in the API's to send its codes.
            codes: Arc::new(CodeKey::random()),
            clock: Clock::system(),
            export_link_ttl: DEFAULT_EXPORT_LINK_TTL,
            notify_batch: DEFAULT_NOTIFY_BATCH,
            operator_email: None,
        }
    }
}

fn throwaway_signer() -> UrlSigner {
    let key: Vec<u8> = (0..4)
        .flat_map(|_| uuid::Uuid::now_v7().into_bytes())
        .collect();
    match UrlSigner::new(key) {
        Ok(signer) => signer,
        // 64 bytes always meet the minimum key length.
        Err(e) => unreachable!("a 64-byte key was refused: {e}"),
    }
}

/// Every kind's handler, as this build runs them.
pub fn registry(retention: &RetentionSettings, deps: &Deps) -> Registry {
    let exports = ExportLinks {
        links: deps.links.with_ttl(
            deps.export_link_ttl
                .min(retention.period(kiln_jobs::DataClass::Exports)),
        ),
        objects: deps.objects.clone(),
    };
    Registry::new()
        .register(GenerateImageHandler {
            generator: deps.generator.clone(),
            moderator: deps.moderator.clone(),
            objects: deps.objects.clone(),
            fetcher: deps.fetcher.clone(),
            links: deps.links.clone(),
        })
        .register(UpscaleImageHandler {
            upscaler: deps.upscaler.clone(),
            moderator: deps.moderator.clone(),
            objects: deps.objects.clone(),
            links: deps.links.clone(),
        })
        .register(ProbeHandler)
        .register(SendEmailHandler {
            mailer: deps.mailer.clone(),
            product_name: deps.product_name.clone(),
            codes: deps.codes.clone(),
            exports: exports.clone(),
        })
        .register(SendSmsHandler {
            sms: deps.sms.clone(),
            product_name: deps.product_name.clone(),
            codes: deps.codes.clone(),
            exports,
        })
        .register(RetentionPurgeHandler {
            retention: retention.clone(),
            clock: deps.clock.clone(),
            objects: deps.objects.clone(),
        })
        .register(AccountPurgeHandler {
            objects: deps.objects.clone(),
        })
        .register(DataExportHandler {
            objects: deps.objects.clone(),
        })
        .register(DeliverWebhookHandler {
            sender: deps.webhooks.clone(),
            links: deps.links.clone(),
            export_link_ttl: deps.export_link_ttl,
            export_days: retention.export_days,
        })
        .register(NotifyUsersHandler {
            batch: deps.notify_batch,
        })
        .register(OperatorExportHandler {
            objects: deps.objects.clone(),
            mailer: deps.mailer.clone(),
            product_name: deps.product_name.clone(),
            operator_email: deps.operator_email.clone(),
            links: deps.links.with_ttl(deps.export_link_ttl),
            retention: retention.clone(),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_has_a_handler() {
        let deps = super::Deps::dev(kiln_store::Objects::memory(), Vec::new());
        let registry = super::registry(&Default::default(), &deps);
        let mut handled: Vec<_> = registry.kinds().collect();
        handled.sort();
        let mut kinds: Vec<_> = kiln_jobs::KINDS.iter().map(|s| s.kind).collect();
        kinds.sort();
        assert_eq!(handled, kinds);
    }

    #[test]
    fn every_handler_runs_under_its_kinds_policy() {
        let deps = super::Deps::dev(kiln_store::Objects::memory(), Vec::new());
        let registry = super::registry(&Default::default(), &deps);
        for spec in kiln_jobs::KINDS {
            assert_eq!(
                registry.policy(spec.kind),
                Some(spec.policy()),
                "{}",
                spec.kind
            );
        }
        assert_eq!(registry.policy("no_such_kind"), None);
    }
}
