//! The operators' scheduled exports (`operator_export` jobs): the rows a
//! period's file is written from, read in pages, and the register of the
//! files written (`GET /admin/v1/exports`), each kept as long as the
//! records it holds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::{OperatorExportKind, UserId};
use uuid::Uuid;

use crate::{
    StoreError,
    access_log::{AccessEntry, AccessEvent},
    codec::{Id, Time},
    orders::Order,
};

/// A period's file, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorExportRecord {
    pub id: Uuid,
    pub kind: OperatorExportKind,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub object_key: String,
    pub rows: u64,
    pub bytes: u64,
    pub created_at: DateTime<Utc>,
    /// When retention removes it with the records it holds, as the
    /// retention settings stood when it was written.
    pub expires_at: DateTime<Utc>,
    pub job_id: Option<Uuid>,
}

#[async_trait]
pub trait OperatorExports: Send + Sync + 'static {
    /// Orders paid in `[start, end)`, after `after` by id, oldest id first.
    async fn paid_orders(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
    /// Access-log entries written in `[start, end)`, after entry `after`,
    /// with the account each is about.
    async fn access_entries_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(Option<UserId>, AccessEntry)>, StoreError>;
    /// Records a period's file; the same kind and period again replaces
    /// the record (its file was overwritten under the same key). The id.
    async fn record_operator_export(&self, r: &OperatorExportRecord) -> Result<Uuid, StoreError>;
    /// Newest period first, before `before` (an id) when given.
    async fn operator_exports(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<OperatorExportRecord>, StoreError>;
    /// Files of `kind` whose period ended by `ended_by`: every record they
    /// hold is as old as retention purges.
    async fn expired_operator_exports(
        &self,
        kind: OperatorExportKind,
        ended_by: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OperatorExportRecord>, StoreError>;
    async fn delete_operator_export(&self, id: Uuid) -> Result<(), StoreError>;
}

pub(crate) const EXPORT_COLUMNS: &str =
    "id, kind, period_start, period_end, object_key, rows, bytes, created_at, expires_at, job_id";

#[derive(sqlx::FromRow)]
pub(crate) struct ExportRow {
    id: Id,
    kind: String,
    period_start: Time,
    period_end: Time,
    object_key: String,
    rows: i64,
    bytes: i64,
    created_at: Time,
    expires_at: Time,
    job_id: Option<Id>,
}

pub(crate) fn records(rows: Vec<ExportRow>) -> Result<Vec<OperatorExportRecord>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok(OperatorExportRecord {
                id: r.id.0,
                kind: OperatorExportKind::parse(&r.kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("export kind {:?}", r.kind)))?,
                period_start: r.period_start.0,
                period_end: r.period_end.0,
                object_key: r.object_key,
                rows: r.rows as u64,
                bytes: r.bytes as u64,
                created_at: r.created_at.0,
                expires_at: r.expires_at.0,
                job_id: r.job_id.map(|j| j.0),
            })
        })
        .collect()
}

pub(crate) const ARCHIVE_COLUMNS: &str = "id, user_id, event, ip, user_agent, detail, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct ArchiveRow {
    id: i64,
    user_id: Option<Id>,
    event: String,
    ip: Option<String>,
    user_agent: Option<String>,
    detail: Option<crate::codec::Json>,
    created_at: Time,
}

pub(crate) fn archived(
    rows: Vec<ArchiveRow>,
) -> Result<Vec<(Option<UserId>, AccessEntry)>, StoreError> {
    rows.into_iter()
        .map(|r| {
            Ok((
                r.user_id.map(|u| UserId(u.0)),
                AccessEntry {
                    id: r.id,
                    event: AccessEvent::parse(&r.event).ok_or_else(|| {
                        StoreError::Corrupt(format!("access event {:?}", r.event))
                    })?,
                    ip: r.ip,
                    user_agent: r.user_agent,
                    detail: r.detail.map(|d| d.0),
                    created_at: r.created_at.0,
                },
            ))
        })
        .collect()
}
