//! Rows as both databases return them, read once: each engine selects the
//! same columns (the lists below) and `FromRow` decodes them through the
//! [`codec`](crate::codec) newtypes, whichever database it is.

use chrono::{DateTime, Utc};
use kiln_jobs::{OrderId, UserId};

use crate::{
    ClaimedJob, ErrorEntry, JobRecord, JobState, Lease, StoreError,
    access_log::{AccessEntry, AccessEvent},
    accounts::Profile,
    codec::{Id, Json, Time},
    credits::{CreditBalance, CreditEntry, EntryKind},
    generations::{Generation, ImageRecord, ModerationRecord, ModerationSubject},
    orders::{Order, OrderStatus},
};

/// Every column of `jobs` that [`JobRecord`] holds.
pub(crate) const JOB_COLUMNS: &str =
    "id, kind, queue, owner, payload, schema_version, state, stage, progress,
    priority, attempt, max_attempts, run_at, lease_owner, lease_expires_at, token, rescues,
    cancel_requested, result, errors, idempotency_key, created_at, started_at, finished_at,
    parent_id";

/// Every column of `jobs` and `finished_jobs`, in table order: a job
/// that ends moves from one to the other whole.
const STORED_COLUMNS: [&str; 30] = [
    "id",
    "kind",
    "queue",
    "owner",
    "payload",
    "schema_version",
    "state",
    "stage",
    "progress",
    "priority",
    "fair_seq",
    "attempt",
    "max_attempts",
    "run_at",
    "lease_owner",
    "lease_expires_at",
    "token",
    "rescues",
    "cancel_requested",
    "result",
    "errors",
    "idempotency_key",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "credits",
    "parent_id",
    "follow_up_credits",
    "traceparent",
];

/// `INSERT INTO finished_jobs (…) SELECT …`: the insert that moves a job
/// row (selected or `RETURNING *` as `source`) into `finished_jobs`, each
/// column as it was but those in `set`, given as SQL expressions over the
/// old row. A finished job holds no lease. The caller removes the row from
/// `jobs` in the same statement (Postgres) or transaction (SQLite).
pub(crate) fn move_finished(set: &[(&str, &str)], source: &str) -> String {
    move_row("finished_jobs", set, source)
}

/// `INSERT INTO jobs (…) SELECT …`: the insert that brings a finished job
/// (an operator's retry) back into `jobs`, as [`move_finished`] moves one
/// out.
pub(crate) fn move_unfinished(set: &[(&str, &str)], source: &str) -> String {
    move_row("jobs", set, source)
}

fn move_row(table: &str, set: &[(&str, &str)], source: &str) -> String {
    let lease = [("lease_owner", "NULL"), ("lease_expires_at", "NULL")];
    let values: Vec<String> = STORED_COLUMNS
        .iter()
        .map(|col| {
            set.iter()
                .chain(&lease)
                .find(|(c, _)| c == col)
                .map_or_else(|| (*col).to_owned(), |(_, e)| (*e).to_owned())
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {source}",
        STORED_COLUMNS.join(", "),
        values.join(", ")
    )
}

/// What a claim returns of each job it took (`RETURNING` these).
pub(crate) const CLAIM_COLUMNS: &str = "id, token, kind, queue, owner, payload, schema_version,
    attempt, max_attempts, run_at, started_at, priority, fair_seq, traceparent";

pub(crate) const GENERATION_COLUMNS: &str =
    "id, job_id, owner, prompt, model, width, height, n, reference_urls, created_at";

pub(crate) const IMAGE_COLUMNS: &str =
    "id, generation_id, owner, object_key, width, height, content_type, bytes, created_at,
     source_image_id";

pub(crate) const MODERATION_COLUMNS: &str =
    "id, owner, generation_id, subject, provider, allowed, categories, scores, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: Id,
    kind: String,
    queue: String,
    owner: Option<String>,
    payload: Json,
    schema_version: i32,
    state: JobState,
    stage: Option<String>,
    progress: i16,
    priority: i16,
    attempt: i32,
    max_attempts: i32,
    run_at: Time,
    lease_owner: Option<String>,
    lease_expires_at: Option<Time>,
    token: i64,
    rescues: i32,
    cancel_requested: bool,
    result: Option<Json>,
    errors: Json,
    idempotency_key: Option<String>,
    created_at: Time,
    started_at: Option<Time>,
    finished_at: Option<Time>,
    parent_id: Option<Id>,
}

fn time(t: Option<Time>) -> Option<DateTime<Utc>> {
    t.map(|t| t.0)
}

/// `jobs.owner` as bound: text on both databases (system jobs have none).
pub(crate) fn owner_text(owner: Option<UserId>) -> Option<String> {
    owner.map(|o| o.to_string())
}

/// `jobs.owner` is text on both databases (system jobs have none).
pub(crate) fn owner(text: Option<String>) -> Result<Option<UserId>, StoreError> {
    text.map(|t| {
        t.parse()
            .map_err(|_| StoreError::Corrupt(format!("job owner {t:?} is not a user id")))
    })
    .transpose()
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;

    fn try_from(r: JobRow) -> Result<JobRecord, StoreError> {
        Ok(JobRecord {
            id: r.id.0,
            kind: r.kind,
            queue: r.queue,
            owner: owner(r.owner)?,
            payload: r.payload.0,
            schema_version: r.schema_version,
            state: r.state,
            stage: r.stage,
            progress: r.progress,
            priority: r.priority,
            attempt: r.attempt as u32,
            max_attempts: r.max_attempts as u32,
            run_at: r.run_at.0,
            lease_owner: r.lease_owner,
            lease_expires_at: time(r.lease_expires_at),
            token: r.token,
            rescues: r.rescues as u32,
            cancel_requested: r.cancel_requested,
            result: r.result.map(|j| j.0),
            errors: r.errors.parse::<Vec<ErrorEntry>>("job error history")?,
            idempotency_key: r.idempotency_key,
            created_at: r.created_at.0,
            started_at: time(r.started_at),
            finished_at: time(r.finished_at),
            parent_id: r.parent_id.map(|p| p.0),
        })
    }
}

/// Decodes whole job rows.
pub(crate) fn jobs(rows: Vec<JobRow>) -> Result<Vec<JobRecord>, StoreError> {
    rows.into_iter().map(JobRecord::try_from).collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct ClaimRow {
    id: Id,
    token: i64,
    kind: String,
    queue: String,
    owner: Option<String>,
    payload: Json,
    schema_version: i32,
    attempt: i32,
    max_attempts: i32,
    run_at: Time,
    started_at: Time,
    priority: i16,
    fair_seq: i64,
    traceparent: Option<String>,
}

/// Claimed jobs in claim order (priority, the owner round-robin, age):
/// `RETURNING` gives them in no particular order.
pub(crate) fn claimed(mut rows: Vec<ClaimRow>) -> Result<Vec<ClaimedJob>, StoreError> {
    rows.sort_by_key(|r| (-r.priority, r.fair_seq, r.run_at.0, r.id.0));
    rows.into_iter()
        .map(|r| {
            let owner = owner(r.owner)?;
            Ok(ClaimedJob {
                lease: Lease {
                    id: r.id.0,
                    token: r.token,
                    owned: owner.is_some(),
                },
                kind: r.kind,
                queue: r.queue,
                owner,
                payload: r.payload.0,
                schema_version: r.schema_version,
                attempt: r.attempt as u32,
                max_attempts: r.max_attempts as u32,
                due_at: r.run_at.0,
                started_at: r.started_at.0,
                traceparent: r.traceparent,
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct GenerationRow {
    id: Id,
    job_id: Id,
    owner: Id,
    prompt: String,
    model: String,
    width: i32,
    height: i32,
    n: i32,
    reference_urls: Json,
    created_at: Time,
}

impl TryFrom<GenerationRow> for Generation {
    type Error = StoreError;

    fn try_from(r: GenerationRow) -> Result<Generation, StoreError> {
        Ok(Generation {
            id: r.id.0,
            job_id: r.job_id.0,
            owner: UserId(r.owner.0),
            prompt: r.prompt,
            model: r.model,
            width: r.width as u32,
            height: r.height as u32,
            n: r.n as u32,
            reference_urls: r.reference_urls.parse("generation reference_urls")?,
            created_at: r.created_at.0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ImageRow {
    id: Id,
    generation_id: Id,
    owner: Id,
    object_key: String,
    width: i32,
    height: i32,
    content_type: String,
    bytes: i64,
    created_at: Time,
    source_image_id: Option<Id>,
}

impl From<ImageRow> for ImageRecord {
    fn from(r: ImageRow) -> ImageRecord {
        ImageRecord {
            id: r.id.0,
            generation_id: r.generation_id.0,
            owner: UserId(r.owner.0),
            object_key: r.object_key,
            width: r.width as u32,
            height: r.height as u32,
            content_type: r.content_type,
            bytes: r.bytes,
            created_at: r.created_at.0,
            source_image_id: r.source_image_id.map(|id| id.0),
        }
    }
}

pub(crate) fn images(rows: Vec<ImageRow>) -> Vec<ImageRecord> {
    rows.into_iter().map(ImageRecord::from).collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct ModerationRow {
    id: Id,
    owner: Id,
    generation_id: Option<Id>,
    subject: String,
    provider: String,
    allowed: bool,
    categories: Json,
    scores: Json,
    created_at: Time,
}

impl TryFrom<ModerationRow> for ModerationRecord {
    type Error = StoreError;

    fn try_from(r: ModerationRow) -> Result<ModerationRecord, StoreError> {
        Ok(ModerationRecord {
            id: r.id.0,
            owner: UserId(r.owner.0),
            generation_id: r.generation_id.map(|id| id.0),
            subject: ModerationSubject::parse(&r.subject).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown moderation subject {:?}", r.subject))
            })?,
            provider: r.provider,
            allowed: r.allowed,
            categories: r.categories.parse("moderation categories")?,
            scores: r.scores.parse("moderation scores")?,
            created_at: r.created_at.0,
        })
    }
}

pub(crate) const CREDIT_ENTRY_COLUMNS: &str =
    "id, kind, amount, reason, job_id, order_id, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct CreditEntryRow {
    id: i64,
    kind: String,
    amount: i64,
    reason: String,
    job_id: Option<Id>,
    order_id: Option<Id>,
    created_at: Time,
}

impl TryFrom<CreditEntryRow> for CreditEntry {
    type Error = StoreError;

    fn try_from(r: CreditEntryRow) -> Result<CreditEntry, StoreError> {
        Ok(CreditEntry {
            id: r.id,
            kind: EntryKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("credit entry kind {:?}", r.kind)))?,
            amount: r.amount.max(0) as u64,
            reason: r.reason,
            job_id: r.job_id.map(|id| id.0),
            order_id: r.order_id.map(|id| id.0),
            created_at: r.created_at.0,
        })
    }
}

/// An account's `(balance, reserved)` row; no row is no credits.
pub(crate) fn credit_balance(row: Option<(i64, i64)>) -> CreditBalance {
    row.map_or_else(CreditBalance::default, |(balance, reserved)| {
        CreditBalance {
            balance: balance.max(0) as u64,
            reserved: reserved.max(0) as u64,
        }
    })
}

pub(crate) fn credit_entries(rows: Vec<CreditEntryRow>) -> Result<Vec<CreditEntry>, StoreError> {
    rows.into_iter().map(CreditEntry::try_from).collect()
}

pub(crate) const ACCESS_COLUMNS: &str = "id, event, ip, user_agent, detail, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct AccessRow {
    id: i64,
    event: String,
    ip: Option<String>,
    user_agent: Option<String>,
    detail: Option<Json>,
    created_at: Time,
}

pub(crate) fn access_entries(rows: Vec<AccessRow>) -> Result<Vec<AccessEntry>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok(AccessEntry {
                id: r.id,
                event: AccessEvent::parse(&r.event)
                    .ok_or_else(|| StoreError::Corrupt(format!("access event {:?}", r.event)))?,
                ip: r.ip,
                user_agent: r.user_agent,
                detail: r.detail.map(|d| d.0),
                created_at: r.created_at.0,
            })
        })
        .collect()
}

pub(crate) const ORDER_COLUMNS: &str = "id, user_id, provider, pack, credits, status, \
    transaction_id, amount, currency, created_at, paid_at";

#[derive(sqlx::FromRow)]
pub(crate) struct OrderRow {
    id: Id,
    user_id: Option<Id>,
    provider: String,
    pack: String,
    credits: i64,
    status: String,
    transaction_id: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    created_at: Time,
    paid_at: Option<Time>,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;

    fn try_from(r: OrderRow) -> Result<Order, StoreError> {
        Ok(Order {
            id: OrderId(r.id.0),
            user: r.user_id.map(|id| UserId(id.0)),
            provider: r.provider,
            pack: r.pack,
            credits: u32::try_from(r.credits)
                .map_err(|_| StoreError::Corrupt(format!("order credits {}", r.credits)))?,
            status: OrderStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("order status {:?}", r.status)))?,
            transaction_id: r.transaction_id,
            amount: r.amount,
            currency: r.currency,
            created_at: r.created_at.0,
            paid_at: r.paid_at.map(|t| t.0),
        })
    }
}

pub(crate) fn orders(rows: Vec<OrderRow>) -> Result<Vec<Order>, StoreError> {
    rows.into_iter().map(Order::try_from).collect()
}

/// The addresses sealed: the [`Store`](crate::Store) opens them.
pub(crate) const PROFILE_COLUMNS: &str = "id, email_sealed AS email, phone_sealed AS phone, \
    birth_date, referral_code, operator, verified_at, restricted_at, created_at, locale";

#[derive(sqlx::FromRow)]
pub(crate) struct ProfileRow {
    id: Id,
    email: Option<String>,
    phone: Option<String>,
    birth_date: chrono::NaiveDate,
    referral_code: String,
    operator: bool,
    verified_at: Option<Time>,
    restricted_at: Option<Time>,
    created_at: Time,
    locale: String,
}

impl TryFrom<ProfileRow> for Profile {
    type Error = StoreError;

    fn try_from(r: ProfileRow) -> Result<Profile, StoreError> {
        Ok(Profile {
            id: UserId(r.id.0),
            email: r.email,
            phone: r.phone,
            birth_date: r.birth_date,
            referral_code: r.referral_code,
            operator: r.operator,
            verified_at: r.verified_at.map(|t| t.0),
            restricted_at: r.restricted_at.map(|t| t.0),
            created_at: r.created_at.0,
            locale: locale(&r.locale)?,
        })
    }
}

/// A stored locale tag read back.
pub(crate) fn locale(tag: &str) -> Result<kiln_jobs::Locale, StoreError> {
    kiln_jobs::Locale::parse(tag).ok_or_else(|| StoreError::Corrupt(format!("locale {tag:?}")))
}

pub(crate) const EXPORTED_GENERATION_COLUMNS: &str = "id, job_id, prompt, model, width, height, n, \
    reference_urls, provider, provider_latency_ms, created_at, finished_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ExportedGenerationRow {
    id: Id,
    job_id: Id,
    prompt: String,
    model: String,
    width: i32,
    height: i32,
    n: i32,
    reference_urls: Json,
    provider: Option<String>,
    provider_latency_ms: Option<i32>,
    created_at: Time,
    finished_at: Option<Time>,
}

impl TryFrom<ExportedGenerationRow> for crate::export::ExportedGeneration {
    type Error = StoreError;

    fn try_from(r: ExportedGenerationRow) -> Result<Self, StoreError> {
        Ok(crate::export::ExportedGeneration {
            id: r.id.0,
            job_id: r.job_id.0,
            prompt: r.prompt,
            model: r.model,
            width: r.width as u32,
            height: r.height as u32,
            n: r.n as u32,
            reference_urls: r.reference_urls.parse("generation reference_urls")?,
            provider: r.provider,
            provider_latency_ms: r.provider_latency_ms.map(i64::from),
            created_at: r.created_at.0,
            finished_at: r.finished_at.map(|t| t.0),
        })
    }
}
