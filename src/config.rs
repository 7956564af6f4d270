//! One typed settings tree, read once at start from an optional TOML file
//! and `KILN_<SECTION>_<KEY>` environment variables (which win), and
//! validated before anything runs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use kiln_api::{ApiConfig, CreditsConfig};
use kiln_jobs::RetentionSettings;
use kiln_providers::{
    ProviderSettings, email::EmailSettings, fetch::FetchPolicy, images::ImagesSettings,
    limits::RateLimitSettings, moderation::ModerationSettings, payments::PaymentsSettings,
    sms::SmsSettings, upscale::UpscaleSettings, webhook::WebhookSettings,
};
use kiln_scheduler::SchedulerConfig;
use kiln_workers::WorkerConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod known;

pub use known::Known;

/// `KILN_*` variables that are not settings and that kiln does not read
/// either: `KILN_TEST_*` for the test kit (`KILN_TEST_POSTGRES_URL`,
/// `kiln_store::testing`) and `KILN_BENCH_*` for measurements
/// (`KILN_BENCH_POSTGRES_URL` of `kiln bench`, `KILN_BENCH_IMAGES` of the
/// export benchmark). Variables the command line reads (`KILN_CONFIG`) are
/// passed to [`Settings::load`] by their `clap` definitions.
const NOT_SETTINGS: &[&str] = &["KILN_TEST_", "KILN_BENCH_"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub worker: WorkerConfig,
    pub scheduler: SchedulerConfig,
    pub retention: RetentionSettings,
    pub api: ApiConfig,
    pub credits: CreditsConfig,
    pub encryption: EncryptionSettings,
    pub storage: StorageSettings,
    pub images: ImagesSettings,
    pub moderation: ModerationSettings,
    pub upscale: UpscaleSettings,
    pub email: EmailSettings,
    pub sms: SmsSettings,
    pub payments: PaymentsSettings,
    pub rate_limits: RateLimitSettings,
    pub reference_images: FetchPolicy,
    pub webhooks: WebhookSettings,
}

/// The keys personal data is sealed under (`[encryption]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionSettings {
    /// AES-256 keys by id, each 64 hex digits. Every process sharing a
    /// database must have the same. When unset, keys are generated into
    /// `key_dir` on first start (the embedded default).
    pub keys: BTreeMap<String, SecretString>,
    /// The id of the key that seals new data (default: the only key).
    pub current_key: Option<String>,
    /// The blind-index key (hex, 32 bytes or more); required with `keys`,
    /// and never rotated.
    pub index_key: Option<SecretString>,
    /// Where generated keys live (`index.key`, `k1.key`, …).
    pub key_dir: PathBuf,
}

impl Default for EncryptionSettings {
    fn default() -> Self {
        EncryptionSettings {
            keys: BTreeMap::new(),
            current_key: None,
            index_key: None,
            key_dir: PathBuf::from("data/pii-keys"),
        }
    }
}

impl EncryptionSettings {
    /// Whether the keys come from the configuration (not from `key_dir`).
    pub fn configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The keys: from the configuration, or from `key_dir` (made there on
    /// first start).
    pub fn pii(&self) -> Result<kiln_store::Pii, String> {
        if !self.configured() {
            return kiln_store::Pii::load_or_create(&self.key_dir)
                .map_err(|e| format!("encryption.key_dir: {e}"));
        }
        let hex_key = |name: &str, value: &SecretString| {
            hex::decode(value.expose_secret().trim())
                .map_err(|_| format!("encryption.{name}: not hex"))
        };
        let index = self
            .index_key
            .as_ref()
            .ok_or("encryption.index_key: required with encryption.keys")?;
        let index = hex_key("index_key", index)?;
        let mut keys = BTreeMap::new();
        for (id, key) in &self.keys {
            keys.insert(id.clone(), hex_key(&format!("keys.{id}"), key)?);
        }
        let current = match (&self.current_key, keys.len()) {
            (Some(id), _) => id.clone(),
            (None, 1) => keys.keys().next().cloned().unwrap_or_default(),
            (None, _) => {
                return Err("encryption.current_key: required with more than one key".into());
            }
        };
        kiln_store::Pii::new(&index, &current, &keys).map_err(|e| format!("encryption: {e}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `local` (files under `root`) or `s3` (an S3-compatible bucket:
    /// AWS, Alibaba OSS, MinIO). Either way nothing is public: objects are
    /// served by kiln behind signed, expiring links.
    pub backend: StorageBackend,
    /// Local directory for private objects (images, exports).
    pub root: PathBuf,
    pub s3_bucket: Option<String>,
    pub s3_region: String,
    /// The region endpoint, e.g. `https://oss-cn-hangzhou.aliyuncs.com`;
    /// unset for AWS.
    pub s3_endpoint: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<SecretString>,
    /// `<bucket>.<endpoint host>` requests, which OSS requires.
    pub s3_virtual_hosted_style: bool,
    /// TEST ONLY: a plain-http endpoint.
    pub s3_allow_http: bool,
    /// Hex key (32+ bytes) that signs object URLs. Every `serve` process
    /// must share it. When unset, a key is generated into
    /// `storage.signing_key_file` on first start and reused.
    pub signing_key: Option<String>,
    pub signing_key_file: PathBuf,
    /// Where clients and providers reach the API, e.g.
    /// `https://kiln.example.com`: links handed to providers (an image to
    /// upscale, a reference image) are absolute under it. Required with a
    /// provider that fetches images (`upscale.provider = "fal"`).
    pub public_base_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Local,
    S3,
}

impl StorageSettings {
    /// The bucket, as the settings describe it.
    pub fn objects(&self) -> Result<kiln_store::Objects, String> {
        match self.backend {
            StorageBackend::Local => {
                kiln_store::Objects::local(&self.root).map_err(|e| format!("storage.root: {e}"))
            }
            StorageBackend::S3 => {
                let required = |value: &Option<String>, name: &str| {
                    value
                        .clone()
                        .filter(|v| !v.trim().is_empty())
                        .ok_or_else(|| {
                            format!("storage.{name}: required when storage.backend = \"s3\"")
                        })
                };
                let secret = self
                    .s3_secret_access_key
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned());
                kiln_store::Objects::s3(&kiln_store::S3Options {
                    bucket: required(&self.s3_bucket, "s3_bucket")?,
                    region: self.s3_region.clone(),
                    endpoint: self.s3_endpoint.clone(),
                    access_key_id: required(&self.s3_access_key_id, "s3_access_key_id")?,
                    secret_access_key: required(&secret, "s3_secret_access_key")?,
                    virtual_hosted_style: self.s3_virtual_hosted_style,
                    allow_http: self.s3_allow_http,
                })
                .map_err(|e| format!("storage.s3_bucket: {e}"))
            }
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            backend: StorageBackend::Local,
            root: PathBuf::from("data/objects"),
            s3_bucket: None,
            s3_region: "us-east-1".to_owned(),
            s3_endpoint: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_virtual_hosted_style: true,
            s3_allow_http: false,
            signing_key: None,
            signing_key_file: PathBuf::from("data/signing.key"),
            public_base_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite:data/kiln.db` (embedded default) or `postgres://user@host/db`.
    pub url: String,
    /// Postgres itself, when `url` is a pooler: `LISTEN` and migrations go
    /// here. Required with `pooler = "transaction"`.
    pub direct_url: Option<String>,
    /// `none`, or `transaction` when `url` is a transaction pooler
    /// (PgBouncer's `pool_mode = transaction`).
    pub pooler: kiln_store::Pooler,
    pub max_connections: u32,
    /// Apply pending migrations at start (Postgres takes a lock, so many
    /// processes starting together is safe).
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite:data/kiln.db".to_owned(),
            direct_url: None,
            pooler: kiln_store::Pooler::None,
            max_connections: 10,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Public API listener.
    pub addr: SocketAddr,
    /// A client must send a request's whole head (request line and
    /// headers) within this, or the connection is closed; an idle
    /// keep-alive connection is closed after it too. Both listeners.
    pub header_read_timeout_ms: u64,
    /// Connections open at once from one peer address, on each listener;
    /// more are answered 429 and closed at once. 0: no limit (behind a
    /// proxy, whose own address every connection comes from).
    pub max_connections_per_ip: usize,
    /// The largest request head (request line and headers), in bytes;
    /// larger ones are answered 431 by the HTTP parser, with no body.
    /// 1024 to 1 MiB.
    pub max_header_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout_ms: 20_000,
            max_connections_per_ip: 256,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl HttpSettings {
    /// Below this not even a request with a bearer token fits.
    pub const MIN_HEADER_BYTES: usize = 1024;

    fn validate(&self) -> Result<(), String> {
        if !(1..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(
                "invalid setting http.header_read_timeout_ms (KILN_HTTP_HEADER_READ_TIMEOUT_MS): must be between 1 and 600000"
                    .to_owned(),
            );
        }
        if !(Self::MIN_HEADER_BYTES..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(format!(
                "invalid setting http.max_header_bytes (KILN_HTTP_MAX_HEADER_BYTES): must be between {} and 1048576",
                Self::MIN_HEADER_BYTES
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Internal listener: `/metrics`, `/healthz`, `/readyz`.
    pub addr: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `kiln=debug,sqlx=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Traces (`[telemetry]`): nothing is sent unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`: spans go to
    /// `<endpoint>/v1/traces` as JSON.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span.
    pub service_name: String,
    /// How long one export may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: "kiln".to_owned(),
            export_timeout_ms: 10_000,
        }
    }
}

impl Settings {
    /// The provider sections together, as the workers build them.
    pub fn providers(&self) -> ProviderSettings {
        ProviderSettings {
            images: self.images.clone(),
            moderation: self.moderation.clone(),
            upscale: self.upscale.clone(),
            email: self.email.clone(),
            sms: self.sms.clone(),
            rate_limits: self.rate_limits.clone(),
            reference_images: self.reference_images.clone(),
            webhooks: self.webhooks.clone(),
        }
    }

    /// Reads the file (when given) and the environment, then validates.
    /// Errors name the offending setting. `other_vars` are the `KILN_*`
    /// variables the command line reads, which are not settings.
    pub fn load(file: Option<&Path>, other_vars: &[String]) -> Result<Settings, String> {
        let known = std::sync::Arc::new(Known::of::<Settings>());
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().unwrap_or_default())))
            .collect();
        let mut figment = Figment::new();
        let mut unknown = Vec::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            unknown.extend(unknown_in_file(&known, file));
            figment = figment.merge(Toml::file_exact(file));
        }
        unknown.extend(unknown_in_env(
            &known,
            env.iter().map(|(k, _)| k.as_str()),
            other_vars,
        ));
        if !unknown.is_empty() {
            return Err(unknown.join("\n"));
        }
        // `RATE_LIMITS_REDIS_URL` -> `rate_limits.redis_url`: the section
        // name may hold underscores itself.
        let setting_key = {
            let known = known.clone();
            move |key: &str| {
                known
                    .split_env(key)
                    .map(|(section, key)| format!("{section}.{key}"))
            }
        };
        figment = figment.merge(
            Env::prefixed("KILN_")
                .filter({
                    let setting_key = setting_key.clone();
                    move |key| setting_key(key.as_str()).is_some()
                })
                .map({
                    let setting_key = setting_key.clone();
                    move |key| setting_key(key.as_str()).unwrap_or_default().into()
                }),
        );
        // figment reads `+15005550006` or `007` as numbers, losing the `+`
        // or the zeros: such values are text (phone numbers, codes).
        for (key, value) in &env {
            if let Some(key) = strip_kiln(key).and_then(&setting_key)
                && (value.starts_with('+') || {
                    let mut chars = value.chars();
                    chars.next() == Some('0') && chars.next().is_some_and(|c| c.is_ascii_digit())
                })
                && value.parse::<f64>().is_ok()
            {
                figment = figment.merge(figment::providers::Serialized::global(&key, value));
            }
        }
        let settings: Settings = figment.extract().map_err(describe)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(
                "invalid setting telemetry.otlp_endpoint (KILN_TELEMETRY_OTLP_ENDPOINT): expected an http:// or https:// URL"
                    .to_owned(),
            );
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(
                "invalid setting database.url (KILN_DATABASE_URL): expected sqlite:<path> or postgres://…"
                    .to_owned(),
            );
        }
        let postgres =
            |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
        if let Some(direct) = &self.database.direct_url {
            if !postgres(direct) {
                return Err(
                    "invalid setting database.direct_url (KILN_DATABASE_DIRECT_URL): expected postgres://…"
                        .to_owned(),
                );
            }
            if !postgres(url) {
                return Err(
                    "invalid setting database.direct_url (KILN_DATABASE_DIRECT_URL): only for a Postgres database.url"
                        .to_owned(),
                );
            }
        }
        if self.database.pooler == kiln_store::Pooler::Transaction {
            if !postgres(url) {
                return Err(
                    "invalid setting database.pooler (KILN_DATABASE_POOLER): \"transaction\" needs a Postgres database.url"
                        .to_owned(),
                );
            }
            if self.database.direct_url.is_none() {
                return Err(
                    "invalid setting database.direct_url (KILN_DATABASE_DIRECT_URL): required with database.pooler = \"transaction\": LISTEN and migrations need Postgres itself"
                        .to_owned(),
                );
            }
        }
        self.http.validate()?;
        if self.database.max_connections == 0 {
            return Err("invalid setting database.max_connections: must be at least 1".to_owned());
        }
        if self.http.addr == self.metrics.addr && self.http.addr.port() != 0 {
            return Err(format!(
                "invalid setting metrics.addr: {} is also http.addr; the metrics listener needs its own",
                self.metrics.addr
            ));
        }
        self.worker
            .validate()
            .map_err(|e| format!("invalid setting {e}"))?;
        kiln_scheduler::plans(&self.scheduler).map_err(|e| format!("invalid setting {e}"))?;
        self.retention
            .validate()
            .map_err(|e| format!("invalid setting {e}"))?;
        self.api
            .validate()
            .map_err(|e| format!("invalid setting {e}"))?;
        self.credits
            .validate(&self.api)
            .map_err(|e| format!("invalid setting {e}"))?;
        if self.encryption.configured() {
            self.encryption
                .pii()
                .map_err(|e| format!("invalid setting {e}"))?;
        }
        self.providers()
            .validate()
            .map_err(|e| format!("invalid setting {e}"))?;
        self.payments
            .validate()
            .map_err(|e| format!("invalid setting {e}"))?;
        if let Some(base) = &self.storage.public_base_url
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err(format!(
                "invalid setting storage.public_base_url (KILN_STORAGE_PUBLIC_BASE_URL): {base:?} is not an http(s) URL"
            ));
        }
        if self.upscale.provider == kiln_providers::upscale::Provider::Fal
            && self.storage.public_base_url.is_none()
        {
            return Err(
                "invalid setting storage.public_base_url (KILN_STORAGE_PUBLIC_BASE_URL): required when upscale.provider = \"fal\", which fetches the image by link"
                    .to_owned(),
            );
        }
        if self.storage.backend == StorageBackend::S3 {
            for (name, missing) in [
                ("s3_bucket", self.storage.s3_bucket.is_none()),
                ("s3_access_key_id", self.storage.s3_access_key_id.is_none()),
                (
                    "s3_secret_access_key",
                    self.storage.s3_secret_access_key.is_none(),
                ),
            ] {
                if missing {
                    return Err(format!(
                        "invalid setting storage.{name} (KILN_STORAGE_{}): required when storage.backend = \"s3\"",
                        name.to_ascii_uppercase()
                    ));
                }
            }
        }
        if let Some(key) = &self.storage.signing_key
            && hex::decode(key).map_or(true, |k| k.len() < 32)
        {
            return Err(
                "invalid setting storage.signing_key (KILN_STORAGE_SIGNING_KEY): expected at least 32 bytes as hex"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The name after `KILN_` (the prefix in any case), for a kiln variable.
fn strip_kiln(name: &str) -> Option<&str> {
    name.get(..5)
        .filter(|p| p.eq_ignore_ascii_case("KILN_"))
        .and_then(|_| name.get(5..))
}

/// One line per `KILN_*` variable that is no setting, with the nearest
/// known setting when one is near. Values are never shown (they may be
/// secrets).
fn unknown_in_env<'a>(
    known: &Known,
    names: impl Iterator<Item = &'a str>,
    other_vars: &[String],
) -> Vec<String> {
    let mut unknown = Vec::new();
    for name in names {
        let Some(rest) = strip_kiln(name) else {
            continue;
        };
        let upper = name.to_ascii_uppercase();
        if other_vars.iter().any(|v| v.eq_ignore_ascii_case(name))
            || NOT_SETTINGS.iter().any(|p| upper.starts_with(p))
        {
            continue;
        }
        if known
            .split_env(rest)
            .is_some_and(|(section, key)| known.is_key(section, &key))
        {
            continue;
        }
        let section = rest.to_ascii_lowercase();
        let hint = if let Some(keys) = known.sections.get(&section) {
            let names: Vec<String> = keys
                .iter()
                .map(|k| known::env_name(&format!("{section}.{k}")))
                .collect();
            format!(
                "; {section} is a section, its settings are {}",
                names.join(", ")
            )
        } else {
            match known.nearest(rest, false) {
                Some(path) => format!("; did you mean {} ({path})?", known::env_name(&path)),
                None => "; `kiln --help` lists the settings".to_owned(),
            }
        };
        unknown.push(format!(
            "unknown setting {name} (environment variable){hint}"
        ));
    }
    unknown.sort();
    unknown
}

/// One line per key of the file that names no section or no setting of
/// its section. A file that does not parse is left to the extraction,
/// which says where.
fn unknown_in_file(known: &Known, file: &Path) -> Vec<String> {
    use figment::value::{Dict, Value};
    let Ok(dict) = Figment::from(Toml::file_exact(file)).extract::<Dict>() else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    let mut report = |path: String| {
        let hint = match known.nearest(&path, true) {
            Some(near) => format!("; did you mean {near}?"),
            None => "; `kiln --help` lists the settings".to_owned(),
        };
        unknown.push(format!(
            "unknown setting {path} in {}{hint}",
            file.display()
        ));
    };
    for (section, value) in &dict {
        if !known.sections.contains_key(section) {
            report(section.clone());
            continue;
        }
        if let Value::Dict(_, keys) = value {
            for key in keys.keys() {
                if !known.is_key(section, key) {
                    report(format!("{section}.{key}"));
                }
            }
        }
    }
    unknown
}

/// Names the setting and the variable that sets it, for each problem.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            // Deeper than `section.key` (a pack, a provider's limits): the
            // struct's own fields are the candidates.
            if let figment::error::Kind::UnknownField(field, expected) = &e.kind {
                let near = expected
                    .iter()
                    .map(|c| (c, strsim::damerau_levenshtein(c, field)))
                    .min_by_key(|(_, d)| *d)
                    .filter(|(_, d)| *d <= (field.len() / 3).max(2))
                    .map(|(c, _)| format!("; did you mean {c}?"))
                    .unwrap_or_default();
                let at = if key.is_empty() {
                    String::new()
                } else {
                    format!(" in {key}")
                };
                return format!("unknown setting {field}{at}{near}");
            }
            if key.is_empty() {
                format!("invalid settings: {}", e.kind)
            } else {
                let var = known::env_name(&key);
                format!(
                    "invalid setting {key} ({var} or the config file): {}",
                    e.kind
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The settings README's configuration table lists (its first column).
    fn documented() -> BTreeMap<String, String> {
        let readme = include_str!("../README.md");
        let table = readme
            .split_once("## Configuration")
            .and_then(|(_, rest)| rest.split_once("\n\n| setting |"))
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or_default())
            .unwrap_or_default();
        let mut rows = BTreeMap::new();
        for line in table.lines() {
            let mut cells = line.split('|').skip(1);
            let (Some(setting), Some(env)) = (cells.next(), cells.next()) else {
                continue;
            };
            let names = |cell: &str| -> Vec<String> {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            };
            let envs = names(env);
            for (i, path) in names(setting).into_iter().enumerate() {
                rows.insert(path, envs.get(i).cloned().unwrap_or_default());
            }
        }
        rows
    }

    #[test]
    fn the_known_settings_are_read_off_the_structs() {
        let known = Known::of::<Settings>();
        for path in [
            "worker.concurrency",
            "http.header_read_timeout_ms",
            "storage.s3_bucket",
            "payments.packs",
            "reference_images.max_bytes",
        ] {
            assert!(known.paths().any(|p| p == path), "{path} missing");
        }
        assert_eq!(
            known.split_env("RATE_LIMITS_REDIS_URL"),
            Some(("rate_limits", "redis_url".to_owned()))
        );
    }

    /// Every setting is in README's table under its variable, and the
    /// table names no setting that does not exist.
    #[test]
    fn readme_documents_exactly_the_known_settings() {
        let known: BTreeSet<String> = Known::of::<Settings>().paths().collect();
        let documented = documented();
        let listed: BTreeSet<String> = documented.keys().cloned().collect();
        let undocumented: Vec<_> = known.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&known).collect();
        assert!(
            undocumented.is_empty(),
            "settings README's table lacks: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "README's table names no such settings: {unknown:?}"
        );
        for (path, env) in &documented {
            assert!(
                env.is_empty() || *env == known::env_name(path),
                "{path} is documented as {env}"
            );
        }
    }
}
