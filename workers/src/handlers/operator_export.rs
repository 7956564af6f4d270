//! `operator_export`: writes a period's payment records (CSV) or access
//! log (gzipped JSON lines) to the bucket, streamed page by page into a
//! multipart upload, records it for `GET /admin/v1/exports` and emails the
//! operators a signed link. One key per period: run again for the same
//! slot it overwrites the file and its record, never adds a second.

use std::{borrow::Cow, io::Write as _, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use flate2::{Compression, write::GzEncoder};
use kiln_jobs::{
    DataClass, JobError, OperatorExport, OperatorExportKind, OperatorExportResult,
    RetentionSettings,
};
use kiln_providers::email::{EmailMessage, Mailer};
use kiln_store::{ObjectUpload, Objects, Store, operator_exports::OperatorExportRecord};
use uuid::Uuid;

use super::ObjectLinks;
use crate::{Handler, JobContext, Outcome};

pub struct OperatorExportHandler {
    pub objects: Objects,
    pub mailer: Arc<dyn Mailer>,
    pub product_name: String,
    /// `email.operator_address`; none: the file is only listed.
    pub operator_email: Option<String>,
    /// For the announcement (`api.export_link_ttl_secs`).
    pub links: ObjectLinks,
    /// How long each file is kept: as long as the records it holds.
    pub retention: RetentionSettings,
}

/// Rows read per query.
const PAGE: u32 = 1000;

/// The retention class whose records a file holds.
fn class_of(kind: OperatorExportKind) -> DataClass {
    match kind {
        OperatorExportKind::Accounting => DataClass::Payments,
        OperatorExportKind::AccessLog => DataClass::AccessLog,
    }
}

#[async_trait]
impl Handler<OperatorExport> for OperatorExportHandler {
    async fn run(
        &self,
        job: OperatorExport,
        ctx: &JobContext,
    ) -> Result<Outcome<OperatorExportResult>, JobError> {
        let kind = job.export;
        let (start, end) = kind.period(job.slot);
        let key = kind.object_key(start);
        let mut upload = self.objects.upload(&key).await?;
        let written = match kind {
            OperatorExportKind::Accounting => {
                accounting(ctx.store(), &mut upload, start, end).await
            }
            OperatorExportKind::AccessLog => access_log(ctx.store(), &mut upload, start, end).await,
        };
        let rows = match written {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing half-written is left behind; the retry starts over.
                let _ = upload.abort().await;
                return Err(e);
            }
        };
        let bytes = upload.finish().await?;
        let keep =
            TimeDelta::from_std(self.retention.period(class_of(kind))).unwrap_or(TimeDelta::MAX);
        let now = Utc::now();
        let id = ctx
            .store()
            .record_operator_export(&OperatorExportRecord {
                id: Uuid::now_v7(),
                kind,
                period_start: start,
                period_end: end,
                object_key: key.clone(),
                rows,
                bytes,
                created_at: now,
                expires_at: end
                    .checked_add_signed(keep)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                job_id: Some(ctx.job_id()),
            })
            .await?;
        let announced = self.announce(kind, start, &key, rows, ctx.job_id()).await?;
        Ok(Outcome::Done(OperatorExportResult {
            id,
            object_key: key,
            rows,
            bytes,
            announced,
        }))
    }
}

impl OperatorExportHandler {
    /// Emails the operators where the file is; false when no address is
    /// configured.
    async fn announce(
        &self,
        kind: OperatorExportKind,
        start: DateTime<Utc>,
        key: &str,
        rows: u64,
        job_id: Uuid,
    ) -> Result<bool, JobError> {
        let Some(to) = &self.operator_email else {
            return Ok(false);
        };
        let (what, period) = match kind {
            OperatorExportKind::Accounting => ("accounting export", start.format("%Y-%m")),
            OperatorExportKind::AccessLog => ("access-log archive", start.format("%Y-%m-%d")),
        };
        // Only an absolute link means anything in a mailbox.
        let fetch = if self.links.public_base_url.is_some() {
            let (url, expires) = self.links.url_until(key);
            format!(
                "Download it (the link works until {}):\n{url}",
                expires.format("%Y-%m-%d %H:%M UTC")
            )
        } else {
            "It is listed, with a download link, at GET /admin/v1/exports.".to_owned()
        };
        let product = &self.product_name;
        self.mailer
            .send(&EmailMessage {
                to: to.clone(),
                subject: format!("{product} {what} for {period} is ready"),
                text: format!(
                    "The {what} of {product} for {period} is written: {rows} records, \
                     kept in the bucket as {key}.\n\n{fetch}\n"
                ),
                html: None,
                idempotency_key: Some(job_id.to_string()),
            })
            .await?;
        Ok(true)
    }
}

/// One CSV field: quoted when it holds a separator, a quote or a line
/// break; a text that a spreadsheet would run as a formula is prefixed
/// with `'`.
fn csv_field(value: &str) -> Cow<'_, str> {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let value: Cow<str> = if formula {
        format!("'{value}").into()
    } else {
        value.into()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value
    }
}

const CSV_HEADER: &str =
    "order_id,provider,transaction_id,pack,credits,amount_minor,currency,created_at,paid_at\r\n";

/// The orders paid in the period, without the person (the tax record
/// needs the payment, not who made it).
async fn accounting(
    store: &Store,
    upload: &mut ObjectUpload,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<u64, JobError> {
    upload.write(CSV_HEADER.as_bytes()).await?;
    let (mut after, mut rows) = (None, 0);
    loop {
        let page = store.paid_orders(start, end, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(rows);
        };
        after = Some(last.id.0);
        let mut chunk = String::new();
        for o in &page {
            let time = |t: Option<DateTime<Utc>>| {
                t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            };
            let fields = [
                o.id.0.to_string(),
                csv_field(&o.provider).into_owned(),
                csv_field(o.transaction_id.as_deref().unwrap_or("")).into_owned(),
                csv_field(&o.pack).into_owned(),
                o.credits.to_string(),
                o.amount.map(|a| a.to_string()).unwrap_or_default(),
                csv_field(o.currency.as_deref().unwrap_or("")).into_owned(),
                time(Some(o.created_at)),
                time(o.paid_at),
            ];
            chunk.push_str(&fields.join(","));
            chunk.push_str("\r\n");
        }
        upload.write(chunk.as_bytes()).await?;
        rows += page.len() as u64;
    }
}

/// The period's access log, one JSON object per line, gzipped as it is
/// uploaded (memory holds one page).
async fn access_log(
    store: &Store,
    upload: &mut ObjectUpload,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<u64, JobError> {
    let broken = |e: std::io::Error| JobError::permanent("archive_write", e.to_string());
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    let (mut after, mut rows) = (0, 0);
    loop {
        let page = store
            .access_entries_between(start, end, after, PAGE)
            .await?;
        let Some((_, last)) = page.last() else {
            break;
        };
        after = last.id;
        for (user, e) in &page {
            let line = serde_json::json!({
                "id": e.id,
                "user_id": user,
                "event": e.event,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "detail": e.detail,
                "created_at": e.created_at,
            });
            serde_json::to_writer(&mut gz, &line)
                .map_err(|e| JobError::permanent("archive_write", e.to_string()))?;
            gz.write_all(b"\n").map_err(broken)?;
        }
        rows += page.len() as u64;
        let compressed = std::mem::take(gz.get_mut());
        upload.write(&compressed).await?;
    }
    let rest = gz.finish().map_err(broken)?;
    upload.write(&rest).await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("paddle"), "paddle");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_field(""), "");
    }
}
