use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kiln: a job-queue worker platform. An HTTP API enqueues typed jobs,
/// workers run them with retries, leases and metrics, a scheduler fires
/// periodic work.
///
/// With no subcommand, runs `all` on the embedded default: SQLite under
/// ./data, no configuration needed.
///
/// SETTINGS come from the optional TOML file (--config or KILN_CONFIG) and
/// from KILN_<SECTION>_<KEY> environment variables, which win:
///
///   database.url              KILN_DATABASE_URL             sqlite:data/kiln.db | postgres://user@host/db
///   database.direct_url       KILN_DATABASE_DIRECT_URL      (unset) Postgres itself, for LISTEN and migrations, when database.url is a pooler
///   database.pooler           KILN_DATABASE_POOLER          none | transaction (database.url is PgBouncer with pool_mode = transaction)
///   database.max_connections  KILN_DATABASE_MAX_CONNECTIONS 10
///   database.migrate_on_start KILN_DATABASE_MIGRATE_ON_START true
///   http.addr                 KILN_HTTP_ADDR                127.0.0.1:8080 (public API)
///   http.header_read_timeout_ms KILN_HTTP_HEADER_READ_TIMEOUT_MS 20000 to send a request's head (and idle keep-alive)
///   http.max_connections_per_ip KILN_HTTP_MAX_CONNECTIONS_PER_IP 256 per peer address (0: none; behind a proxy)
///   http.max_header_bytes     KILN_HTTP_MAX_HEADER_BYTES    32768 (larger heads: 431)
///   metrics.addr              KILN_METRICS_ADDR             127.0.0.1:9090 (/metrics, /healthz, /readyz)
///   log.format                KILN_LOG_FORMAT               text | json
///   log.level                 KILN_LOG_LEVEL                info (a tracing filter)
///   worker.concurrency        KILN_WORKER_CONCURRENCY       16 jobs at once per process
///   worker.queues             KILN_WORKER_QUEUES            [] = every queue; e.g. '[default,maintenance]'
///   worker.batch_size         KILN_WORKER_BATCH_SIZE        10 jobs per claim query
///   worker.max_batch_size     KILN_WORKER_MAX_BATCH_SIZE    100: claims grow to this under a backlog
///   worker.lease_ms           KILN_WORKER_LEASE_MS          30000: a lost worker's jobs return after this
///   worker.poll_interval_ms   KILN_WORKER_POLL_INTERVAL_MS  1000 fallback poll while idle
///   worker.shutdown_grace_ms  KILN_WORKER_SHUTDOWN_GRACE_MS 25000 for running jobs on SIGTERM
///   worker.maintenance_interval_ms  KILN_WORKER_MAINTENANCE_INTERVAL_MS  5000
///   worker.crash_loop_cap     KILN_WORKER_CRASH_LOOP_CAP    3 lost workers and a job ends failed
///   worker.notify_batch       KILN_WORKER_NOTIFY_BATCH      500 accounts per notice fan-out transaction
///   scheduler.retention_purge_cron KILN_SCHEDULER_RETENTION_PURGE_CRON "0 17 3 * * *" (cron with seconds, UTC)
///   scheduler.accounting_export_cron KILN_SCHEDULER_ACCOUNTING_EXPORT_CRON "0 0 4 1 * *" (the month before, as CSV)
///   scheduler.access_log_archive_cron KILN_SCHEDULER_ACCESS_LOG_ARCHIVE_CRON "0 45 3 * * *" (the day before, gzip JSON lines)
///   scheduler.catch_up        KILN_SCHEDULER_CATCH_UP       true: after downtime, each plan's latest missed slot fires once
///   retention.deleted_account_days KILN_RETENTION_DELETED_ACCOUNT_DAYS 30 (at most 30)
///   retention.access_log_days KILN_RETENTION_ACCESS_LOG_DAYS 180 (at least 180)
///   retention.moderation_days KILN_RETENTION_MODERATION_DAYS 180 (at least 180)
///   retention.payment_years   KILN_RETENTION_PAYMENT_YEARS  5 (at least 5)
///   retention.finished_jobs_days KILN_RETENTION_FINISHED_JOBS_DAYS 7
///   retention.export_days     KILN_RETENTION_EXPORT_DAYS    7
///   api.bcrypt_cost           KILN_API_BCRYPT_COST          12
///   api.token_ttl_secs        KILN_API_TOKEN_TTL_SECS       2592000 (30 days)
///   api.session_cache_secs    KILN_API_SESSION_CACHE_SECS   60: a token looked up lately is trusted from memory (revocation ends it at once)
///   api.signed_url_ttl_secs   KILN_API_SIGNED_URL_TTL_SECS  600
///   api.export_link_ttl_secs  KILN_API_EXPORT_LINK_TTL_SECS 86400 (a data export's link; never past retention.export_days)
///   api.max_prompt_chars      KILN_API_MAX_PROMPT_CHARS     4000
///   api.max_images            KILN_API_MAX_IMAGES           4
///   api.max_reference_images  KILN_API_MAX_REFERENCE_IMAGES 4
///   api.sizes                 KILN_API_SIZES                '[256x256,512x512,1024x1024,1024x1536,1536x1024]'
///   api.models                KILN_API_MODELS               '[dev-image-1]'
///   api.default_model         KILN_API_DEFAULT_MODEL        dev-image-1
///   api.body_limit_bytes      KILN_API_BODY_LIMIT_BYTES     65536
///   api.request_timeout_ms    KILN_API_REQUEST_TIMEOUT_MS   40000
///   api.code_ttl_secs         KILN_API_CODE_TTL_SECS        600 (a verification code's life)
///   api.code_resend_interval_secs KILN_API_CODE_RESEND_INTERVAL_SECS 60 (0: none)
///   api.codes_per_hour        KILN_API_CODES_PER_HOUR       5 codes to one address an hour
///   api.code_key              KILN_API_CODE_KEY             (hex, >= 32 bytes; shared by all `serve`s and `work`s)
///   api.code_key_file         KILN_API_CODE_KEY_FILE        data/code.key (generated when no key is set)
///   api.client_ip_header      KILN_API_CLIENT_IP_HEADER     (unset: the peer address) X-Forwarded-For behind a trusted proxy
///   api.login_failures_per_address KILN_API_LOGIN_FAILURES_PER_ADDRESS 5 wrong passwords per address in the window, then 429
///   api.login_failures_per_ip KILN_API_LOGIN_FAILURES_PER_IP 50 wrong passwords per IP in the window
///   api.login_failure_window_secs KILN_API_LOGIN_FAILURE_WINDOW_SECS 900
///   credits.signup_grant      KILN_CREDITS_SIGNUP_GRANT     50, once, on an account's first verification
///   credits.referral_bonus    KILN_CREDITS_REFERRAL_BONUS   10 to a referred account and its referrer, on verification
///   credits.image_prices      (config file)                 { "1024x1024" = 1, "1024x1536" = 2, … } per image, by size
///   credits.upscale_prices    (config file)                 { "2" = 1, "4" = 2 } per upscale, by scale
///   storage.backend           KILN_STORAGE_BACKEND          local | s3
///   storage.root              KILN_STORAGE_ROOT             data/objects
///   storage.s3_bucket         KILN_STORAGE_S3_BUCKET        (required with s3)
///   storage.s3_region         KILN_STORAGE_S3_REGION        us-east-1
///   storage.s3_endpoint       KILN_STORAGE_S3_ENDPOINT      https://oss-cn-hangzhou.aliyuncs.com
///   storage.s3_access_key_id  KILN_STORAGE_S3_ACCESS_KEY_ID (required with s3)
///   storage.s3_secret_access_key KILN_STORAGE_S3_SECRET_ACCESS_KEY (required with s3)
///   storage.s3_virtual_hosted_style KILN_STORAGE_S3_VIRTUAL_HOSTED_STYLE true
///   storage.s3_allow_http     KILN_STORAGE_S3_ALLOW_HTTP    false (tests only)
///   storage.signing_key       KILN_STORAGE_SIGNING_KEY      (hex, >= 32 bytes; shared by all `serve`s)
///   storage.signing_key_file  KILN_STORAGE_SIGNING_KEY_FILE data/signing.key (generated when no key is set)
///   images.provider           KILN_IMAGES_PROVIDER          dev | openai
///   images.base_url           KILN_IMAGES_BASE_URL          https://api.openai.com
///   images.api_key            KILN_IMAGES_API_KEY           (required with openai)
///   images.quality            KILN_IMAGES_QUALITY           (server default)
///   images.timeout_ms         KILN_IMAGES_TIMEOUT_MS        120000
///   moderation.provider       KILN_MODERATION_PROVIDER      dev | openai
///   moderation.blocked_words  KILN_MODERATION_BLOCKED_WORDS '[csam,gore,nsfw,nude,porn]'
///   moderation.base_url       KILN_MODERATION_BASE_URL      https://api.openai.com
///   moderation.api_key        KILN_MODERATION_API_KEY       (required with openai)
///   moderation.model          KILN_MODERATION_MODEL         omni-moderation-latest
///   moderation.thresholds     KILN_MODERATION_THRESHOLDS    '{violence=0.5}' (category -> score)
///   moderation.timeout_ms     KILN_MODERATION_TIMEOUT_MS    30000
///   upscale.provider          KILN_UPSCALE_PROVIDER         dev | fal
///   upscale.queue_base_url    KILN_UPSCALE_QUEUE_BASE_URL   https://queue.fal.run
///   upscale.api_key           KILN_UPSCALE_API_KEY          (required with fal)
///   upscale.model_id          KILN_UPSCALE_MODEL_ID         fal-ai/esrgan
///   upscale.poll_interval_ms  KILN_UPSCALE_POLL_INTERVAL_MS 1000
///   upscale.max_wait_ms       KILN_UPSCALE_MAX_WAIT_MS      600000
///   upscale.timeout_ms        KILN_UPSCALE_TIMEOUT_MS       30000
///   storage.public_base_url   KILN_STORAGE_PUBLIC_BASE_URL  (required with fal) https://kiln.example.com
///   reference_images.max_bytes KILN_REFERENCE_IMAGES_MAX_BYTES 20971520
///   reference_images.timeout_ms KILN_REFERENCE_IMAGES_TIMEOUT_MS 15000
///   reference_images.allow_http KILN_REFERENCE_IMAGES_ALLOW_HTTP false (tests only)
///   reference_images.allow_private_addresses KILN_REFERENCE_IMAGES_ALLOW_PRIVATE_ADDRESSES false (tests only)
///   webhooks.timeout_ms       KILN_WEBHOOKS_TIMEOUT_MS      10000 (per delivery attempt)
///   webhooks.max_response_bytes KILN_WEBHOOKS_MAX_RESPONSE_BYTES 65536 (read of a receiver's answer)
///   webhooks.allow_http       KILN_WEBHOOKS_ALLOW_HTTP      false (tests only)
///   webhooks.allow_private_addresses KILN_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES false (tests only)
///   rate_limits.providers.webhooks.* (per receiving host) default 10 per second, 4 at once
///   email.provider            KILN_EMAIL_PROVIDER           dev | smtp | http
///   email.product_name        KILN_EMAIL_PRODUCT_NAME       kiln (in every notice)
///   email.from                KILN_EMAIL_FROM               (required for smtp, http)
///   email.smtp_host           KILN_EMAIL_SMTP_HOST          (required for smtp)
///   email.smtp_port           KILN_EMAIL_SMTP_PORT          587 | 465 | 25 by smtp_tls
///   email.smtp_tls            KILN_EMAIL_SMTP_TLS           starttls | tls | none
///   email.smtp_username       KILN_EMAIL_SMTP_USERNAME      (with smtp_password)
///   email.smtp_password       KILN_EMAIL_SMTP_PASSWORD
///   email.http_base_url       KILN_EMAIL_HTTP_BASE_URL      https://api.resend.com
///   email.http_api_key        KILN_EMAIL_HTTP_API_KEY       (required for http)
///   email.timeout_ms          KILN_EMAIL_TIMEOUT_MS         10000
///   email.outbox_dir          KILN_EMAIL_OUTBOX_DIR         data/outbox (dev)
///   email.operator_address    KILN_EMAIL_OPERATOR_ADDRESS   (unset) where scheduled exports are announced
///   sms.provider              KILN_SMS_PROVIDER             dev | twilio
///   sms.account_sid           KILN_SMS_ACCOUNT_SID          (required for twilio)
///   sms.auth_token            KILN_SMS_AUTH_TOKEN           (required for twilio)
///   sms.from                  KILN_SMS_FROM                 +15005550006 (or messaging_service_sid)
///   sms.messaging_service_sid KILN_SMS_MESSAGING_SERVICE_SID MG...
///   sms.base_url              KILN_SMS_BASE_URL             https://api.twilio.com
///   sms.timeout_ms            KILN_SMS_TIMEOUT_MS           10000
///   sms.outbox_dir            KILN_SMS_OUTBOX_DIR           data/outbox (dev)
///   encryption.keys           KILN_ENCRYPTION_KEYS          '{k1="<64 hex>"}' (unset: generated into key_dir)
///   encryption.current_key    KILN_ENCRYPTION_CURRENT_KEY   k1 (the only key when there is one)
///   encryption.index_key      KILN_ENCRYPTION_INDEX_KEY     (required with keys) 64 hex digits, never rotated
///   encryption.key_dir        KILN_ENCRYPTION_KEY_DIR       data/pii-keys
///   payments.provider         KILN_PAYMENTS_PROVIDER        dev | paddle
///   payments.packs            KILN_PAYMENTS_PACKS           '{small={credits=100,amount=500,currency="USD",price_id="pri_…"}}'
///   payments.share_email      KILN_PAYMENTS_SHARE_EMAIL     true: the account's email goes to the merchant at checkout
///   payments.paddle_base_url  KILN_PAYMENTS_PADDLE_BASE_URL https://api.paddle.com
///   payments.paddle_api_key   KILN_PAYMENTS_PADDLE_API_KEY  (required for paddle)
///   payments.webhook_secret   KILN_PAYMENTS_WEBHOOK_SECRET  (required for paddle) the notification destination's key
///   payments.webhook_tolerance_secs KILN_PAYMENTS_WEBHOOK_TOLERANCE_SECS 5 (paddle), 300 (dev)
///   payments.dev_secret_file  KILN_PAYMENTS_DEV_SECRET_FILE data/payments.key
///   payments.timeout_ms       KILN_PAYMENTS_TIMEOUT_MS      10000
///   rate_limits.providers     KILN_RATE_LIMITS_PROVIDERS    '{images={requests_per_second=5}}'
///   rate_limits.redis_url     KILN_RATE_LIMITS_REDIS_URL    (unset: limits per process)
///   rate_limits.key_prefix    KILN_RATE_LIMITS_KEY_PREFIX   kiln:ratelimit:
///   rate_limits.concurrency_lease_ms KILN_RATE_LIMITS_CONCURRENCY_LEASE_MS 60000
#[derive(Debug, Parser)]
#[command(name = "kiln", version, verbatim_doc_comment)]
pub struct Cli {
    /// A TOML settings file (sections as above).
    #[arg(long, short, global = true, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// API, workers and scheduler in one process (the default).
    All,
    /// The HTTP API only; scale out with more `serve` processes.
    Serve,
    /// Workers only; scale out with more `work` processes on one Postgres.
    Work,
    /// The cron scheduler only; any number of replicas fire each slot once.
    Schedule {
        /// Print each plan, the slot it last handled and its next fire
        /// times (UTC), then exit.
        #[arg(long)]
        list: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage accounts: grant or revoke the operator role.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the keys personal data is sealed under.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Measure throughput and latency against baselines on throwaway
    /// databases; prints one table.
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// Without the `bench` feature, `kiln bench` only says how to get it.
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Give the account with this email or phone (`+…`) the operator role
    /// the admin API asks for; written to its access log.
    GrantOperator { address: String },
    /// Take the operator role away; written to its access log.
    RevokeOperator { address: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Seal with a new key from now on (a new file in
    /// `encryption.key_dir`, or the configured `encryption.current_key`)
    /// and reseal every account under it, in batches.
    Rotate {
        /// Accounts per batch.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

/// The `KILN_*` variables the command line itself reads (`KILN_CONFIG`,
/// and `kiln bench`'s), from their definitions: not settings, and not
/// mistakes.
pub fn env_vars() -> Vec<String> {
    fn collect(command: &clap::Command, out: &mut Vec<String>) {
        out.extend(
            command
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|v| v.to_string_lossy().into_owned()),
        );
        for sub in command.get_subcommands() {
            collect(sub, out);
        }
    }
    let mut vars = Vec::new();
    collect(&<Cli as clap::CommandFactory>::command(), &mut vars);
    vars.sort();
    vars.dedup();
    vars
}

/// What `kiln bench` prints in a build without the `bench` feature.
#[cfg(not(feature = "bench"))]
pub const NO_BENCH: &str =
    "kiln: built without the bench feature: cargo run --release --features bench -- bench";
