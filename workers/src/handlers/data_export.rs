//! `data_export`: a portable copy of an account (its owner's right), one
//! ZIP streamed into object storage with a multipart upload. The ZIP is
//! written as a stream (each entry's sizes and CRC follow its data, in a
//! data descriptor), so nothing seeks back; the records come page by page
//! and the images one at a time, so memory stays flat however large the
//! account: a page of rows, one image, and the upload's parts in flight.
//!
//! Entries: `account.json`, `generations.json`, `images.json` and
//! `images/<id>.<ext>`, `credits.json`, `payments.json`,
//! `access_log.json`, `moderation.json`, and last `manifest.json` (the
//! counts are known only at the end; a ZIP's order means nothing).
//! When it is written, the export-ready notice is enqueued with the job's
//! id; the link is signed when the notice is sent or the export is read.

use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Timelike, Utc};
use kiln_jobs::{DataExport, DataExportResult, JobError, Notice, SendEmail, SendSms, UserId};
use kiln_store::{
    NewJob, ObjectUpload, Objects, Store,
    subject_requests::{NewRequest, RequestKind},
};
use serde::Serialize;
use serde_json::json;
use zip::{
    CompressionMethod, ZipWriter,
    write::{SimpleFileOptions, StreamWriter},
};

use crate::{Handler, JobContext, Outcome};

pub struct DataExportHandler {
    pub objects: Objects,
}

/// Rows per read.
const PAGE: u32 = 500;

/// The manifest's `schema_version`: bumped when an entry changes shape.
pub const EXPORT_SCHEMA_VERSION: u32 = 1;

#[async_trait]
impl Handler<DataExport> for DataExportHandler {
    async fn run(
        &self,
        job: DataExport,
        ctx: &JobContext,
    ) -> Result<Outcome<DataExportResult>, JobError> {
        // The API enqueues an export as the account's own job; one that
        // names another account is nobody's to read.
        if ctx.owner != Some(job.user) {
            return Err(JobError::permanent(
                "not_owner",
                "an export must be owned by the account it copies",
            ));
        }
        let store = ctx.store();
        let key = DataExport::object_key(job.user, ctx.job_id());
        let upload = self.objects.upload(&key).await?;
        let mut zip = ExportZip::new(upload);
        let written = write_export(&mut zip, store, &self.objects, job.user, ctx).await;
        let counts = match written {
            Ok(counts) => counts,
            Err(e) => {
                // Parts already sent are removed; the next attempt starts over.
                let _ = zip.abort().await;
                return Err(e);
            }
        };
        let bytes = zip.finish().await?;
        enqueue_notice(store, job.user, ctx.job_id()).await?;
        // The owner's request for a copy is answered; it is registered
        // first if the API has not yet done so (it does after enqueueing).
        store
            .record_request(NewRequest {
                user: job.user,
                kind: RequestKind::Export,
                job_id: Some(ctx.job_id()),
                answered: true,
            })
            .await?;
        store.answer_requests_of_job(ctx.job_id()).await?;
        Ok(Outcome::Done(DataExportResult {
            object_key: key,
            bytes,
            counts,
        }))
    }
}

/// Tells the account by its address kind (email first) that the export is
/// ready. The notice carries the job id: the sender signs a link.
async fn enqueue_notice(
    store: &Store,
    user: UserId,
    export_id: uuid::Uuid,
) -> Result<(), JobError> {
    let Some(contacts) = store.contacts(user).await? else {
        return Ok(());
    };
    let notice = Notice::ExportFinished { export_id };
    let job = if contacts.email.is_some() {
        NewJob::of(&SendEmail {
            user_id: user,
            notice,
        })
    } else if contacts.phone.is_some() {
        NewJob::of(&SendSms {
            user_id: user,
            notice,
        })
    } else {
        return Ok(());
    };
    let mut job = job.map_err(|e| JobError::permanent("unserializable_notice", e.to_string()))?;
    // A retried export (the upload done, the attempt lost after) tells once.
    job.idempotency_key = Some(format!("export-ready:{export_id}"));
    store.enqueue(job).await?;
    Ok(())
}

/// Writes every entry; answers the counts the manifest holds.
async fn write_export(
    zip: &mut ExportZip,
    store: &Store,
    objects: &Objects,
    user: UserId,
    ctx: &JobContext,
) -> Result<BTreeMap<String, u64>, JobError> {
    let mut counts = BTreeMap::new();
    let profile = store
        .profile(user)
        .await?
        .ok_or_else(|| JobError::permanent("user_missing", "the account no longer exists"))?;
    zip.start("account.json", true)?;
    let account = json!({
        "id": profile.id,
        "email": profile.email,
        "phone": profile.phone,
        "birth_date": profile.birth_date,
        "referral_code": profile.referral_code,
        "verified_at": profile.verified_at,
        "created_at": profile.created_at,
        "restricted": profile.restricted_at.is_some(),
        "restricted_at": profile.restricted_at,
        "operator": profile.operator,
        "locale": profile.locale,
    });
    zip.json(&account).await?;
    counts.insert("account.json".to_owned(), 1);

    ctx.progress("generations", 5).await?;
    let n = json_entry(
        zip,
        "generations.json",
        |after| store.generations_page(user, after, PAGE),
        |g| g.id,
        |g| {
            json!({
                "id": g.id,
                "job_id": g.job_id,
                "prompt": g.prompt,
                "model": g.model,
                "size": format!("{}x{}", g.width, g.height),
                "width": g.width,
                "height": g.height,
                "n": g.n,
                "reference_urls": g.reference_urls,
                "provider": g.provider,
                "provider_latency_ms": g.provider_latency_ms,
                "created_at": g.created_at,
                "finished_at": g.finished_at,
            })
        },
    )
    .await?;
    counts.insert("generations.json".to_owned(), n);

    ctx.progress("images", 10).await?;
    let listed = json_entry(
        zip,
        "images.json",
        |before| store.images_of_owner(user, before, PAGE),
        |i| i.id,
        |i| {
            json!({
                "id": i.id,
                "generation_id": i.generation_id,
                "file": image_entry(i.id, &i.content_type),
                "width": i.width,
                "height": i.height,
                "content_type": i.content_type,
                "bytes": i.bytes,
                "upscaled_from": i.source_image_id,
                "created_at": i.created_at,
            })
        },
    )
    .await?;
    counts.insert("images.json".to_owned(), listed);

    // The bytes, one image at a time (already compressed: stored as is).
    let (mut files, mut missing) = (0u64, 0u64);
    let mut before = None;
    loop {
        if ctx.is_cancelled() {
            return Err(JobError::permanent("cancelled", "the export was cancelled"));
        }
        let page = store.images_of_owner(user, before, PAGE).await?;
        for i in &page {
            // Deleted meanwhile (by its owner or a purge): left out, counted.
            let Some(bytes) = objects.get(&i.object_key).await? else {
                missing += 1;
                continue;
            };
            zip.start(&image_entry(i.id, &i.content_type), false)?;
            zip.write(&bytes).await?;
            files += 1;
        }
        if let Some(done) = ((files + missing) * 80).checked_div(listed) {
            ctx.progress("images", 10 + done.min(80) as u8).await?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => before = Some(last.id),
            _ => break,
        }
    }
    counts.insert("images".to_owned(), files);

    ctx.progress("records", 90).await?;
    let n = json_entry(
        zip,
        "credits.json",
        |before| store.credit_entries(user, before, PAGE),
        |e| e.id,
        |e| {
            json!({
                "id": e.id,
                "kind": e.kind,
                "amount": e.amount,
                "reason": e.reason,
                "job_id": e.job_id,
                "order_id": e.order_id,
                "created_at": e.created_at,
            })
        },
    )
    .await?;
    counts.insert("credits.json".to_owned(), n);

    let n = json_entry(
        zip,
        "payments.json",
        |after| store.orders_page(user, after, PAGE),
        |o| o.id,
        |o| {
            json!({
                "id": o.id.0,
                "provider": o.provider,
                "pack": o.pack,
                "credits": o.credits,
                "status": o.status.as_str(),
                "transaction_id": o.transaction_id,
                "amount": o.amount,
                "currency": o.currency,
                "created_at": o.created_at,
                "paid_at": o.paid_at,
            })
        },
    )
    .await?;
    counts.insert("payments.json".to_owned(), n);

    let n = json_entry(
        zip,
        "access_log.json",
        |before| store.access_log(user, before, PAGE),
        |e| e.id,
        |e| {
            json!({
                "id": e.id,
                "event": e.event,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "created_at": e.created_at,
            })
        },
    )
    .await?;
    counts.insert("access_log.json".to_owned(), n);

    let n = json_entry(
        zip,
        "moderation.json",
        |after| store.moderation_page(user, after, PAGE),
        |d| d.id,
        |d| {
            json!({
                "id": d.id,
                "generation_id": d.generation_id,
                "subject": d.subject.as_str(),
                "provider": d.provider,
                "allowed": d.allowed,
                "categories": d.categories,
                "scores": d.scores,
                "created_at": d.created_at,
            })
        },
    )
    .await?;
    counts.insert("moderation.json".to_owned(), n);

    zip.start("manifest.json", true)?;
    zip.json(&json!({
        "schema_version": EXPORT_SCHEMA_VERSION,
        "generated_at": Utc::now(),
        "account": user,
        "counts": counts,
        "images_missing": missing,
    }))
    .await?;
    Ok(counts)
}

/// An image's name in the ZIP, by its type.
fn image_entry(id: uuid::Uuid, content_type: &str) -> String {
    let ext = match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => "bin",
    };
    format!("images/{id}.{ext}")
}

/// What the ZIP writer writes into: drained into the upload after every
/// write, so it holds one write's bytes at most. A std mutex: never held
/// across an await.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn take(&self) -> Vec<u8> {
        match self.0.lock() {
            Ok(mut buf) => std::mem::take(&mut *buf),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut buf) => buf.extend_from_slice(bytes),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(bytes),
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `zip` crate's stream writer (synchronous, CPU only) over the async
/// upload: each write's output is handed to the upload before the next.
struct ExportZip {
    zip: ZipWriter<StreamWriter<Sink>>,
    sink: Sink,
    upload: ObjectUpload,
    /// The time entries carry (ZIP times have no zone: UTC).
    modified: zip::DateTime,
}

fn zip_error(e: impl std::fmt::Display) -> JobError {
    JobError::permanent("zip_failed", e.to_string())
}

fn zip_time(at: DateTime<Utc>) -> zip::DateTime {
    zip::DateTime::from_date_and_time(
        u16::try_from(at.year()).unwrap_or(1980),
        at.month() as u8,
        at.day() as u8,
        at.hour() as u8,
        at.minute() as u8,
        at.second() as u8,
    )
    .unwrap_or_default()
}

impl ExportZip {
    fn new(upload: ObjectUpload) -> ExportZip {
        let sink = Sink::default();
        ExportZip {
            zip: ZipWriter::new_stream(sink.clone()),
            sink,
            upload,
            modified: zip_time(Utc::now()),
        }
    }

    /// Starts the next entry; `deflate` for text, stored for images.
    fn start(&mut self, name: &str, deflate: bool) -> Result<(), JobError> {
        let method = if deflate {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .last_modified_time(self.modified);
        self.zip.start_file(name, options).map_err(zip_error)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), JobError> {
        self.zip.write_all(bytes).map_err(zip_error)?;
        self.drain().await
    }

    async fn json(&mut self, value: &impl Serialize) -> Result<(), JobError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(zip_error)?;
        self.write(&bytes).await
    }

    async fn drain(&mut self) -> Result<(), JobError> {
        let bytes = self.sink.take();
        if !bytes.is_empty() {
            self.upload.write(&bytes).await?;
        }
        Ok(())
    }

    /// Writes the central directory and completes the object; its size.
    async fn finish(self) -> Result<u64, JobError> {
        let ExportZip {
            zip,
            sink,
            mut upload,
            ..
        } = self;
        zip.finish().map_err(zip_error)?;
        upload.write(&sink.take()).await?;
        Ok(upload.finish().await?)
    }

    async fn abort(self) -> Result<(), JobError> {
        Ok(self.upload.abort().await?)
    }
}

/// Writes the entry `name`: a JSON array of every record `page` answers,
/// read `PAGE` at a time, each page continuing from the `cursor` of the
/// last record before it. Answers how many records it holds.
async fn json_entry<T, C, F>(
    zip: &mut ExportZip,
    name: &str,
    mut page: impl FnMut(Option<C>) -> F,
    cursor: impl Fn(&T) -> C,
    item: impl Fn(&T) -> serde_json::Value,
) -> Result<u64, JobError>
where
    F: std::future::Future<Output = Result<Vec<T>, kiln_store::StoreError>>,
{
    zip.start(name, true)?;
    let mut array = JsonArray::open(zip).await?;
    let mut next = None;
    loop {
        let records = page(next.take()).await?;
        for record in &records {
            array.item(zip, &item(record)).await?;
        }
        match records.last() {
            Some(last) if records.len() == PAGE as usize => next = Some(cursor(last)),
            _ => break,
        }
    }
    array.close(zip).await
}

/// A JSON array written item by item into the current entry.
struct JsonArray {
    count: u64,
}

impl JsonArray {
    async fn open(zip: &mut ExportZip) -> Result<JsonArray, JobError> {
        zip.write(b"[").await?;
        Ok(JsonArray { count: 0 })
    }

    async fn item(&mut self, zip: &mut ExportZip, value: &impl Serialize) -> Result<(), JobError> {
        let mut bytes = if self.count == 0 {
            b"\n".to_vec()
        } else {
            b",\n".to_vec()
        };
        serde_json::to_writer(&mut bytes, value).map_err(zip_error)?;
        zip.write(&bytes).await?;
        self.count += 1;
        Ok(())
    }

    /// Ends the array; how many items it holds.
    async fn close(self, zip: &mut ExportZip) -> Result<u64, JobError> {
        zip.write(b"\n]\n").await?;
        Ok(self.count)
    }
}
