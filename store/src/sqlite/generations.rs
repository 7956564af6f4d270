use async_trait::async_trait;
use kiln_jobs::GenerateImage;
use sqlx::{Row, sqlite::SqliteRow};
use uuid::Uuid;

use super::{RECORD_COLUMNS, SqliteStore, now_ms, record_from, time, uuid};
use crate::generations::{ModerationRecord, ModerationSubject};
use crate::{
    JobRecord, NewJob, StoreError,
    generations::{
        Generation, GenerationEnqueued, Generations, ImageRecord, JobFilter, NewGeneration,
    },
};

const GENERATION_COLUMNS: &str =
    "id, job_id, owner, prompt, model, width, height, n, reference_urls, created_at";
fn moderation_from(row: &SqliteRow) -> Result<ModerationRecord, StoreError> {
    let subject: String = row.try_get("subject")?;
    let generation_id: Option<String> = row.try_get("generation_id")?;
    let corrupt =
        |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("moderation {what}: {e}"));
    Ok(ModerationRecord {
        id: uuid(&row.try_get::<String, _>("id")?)?,
        owner: uuid(&row.try_get::<String, _>("owner")?)?,
        generation_id: generation_id.as_deref().map(uuid).transpose()?,
        subject: ModerationSubject::parse(&subject).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown moderation subject {subject:?}"))
        })?,
        provider: row.try_get("provider")?,
        allowed: row.try_get("allowed")?,
        categories: serde_json::from_str(&row.try_get::<String, _>("categories")?)
            .map_err(|e| corrupt("categories", e))?,
        scores: serde_json::from_str(&row.try_get::<String, _>("scores")?)
            .map_err(|e| corrupt("scores", e))?,
        created_at: time(row.try_get("created_at")?)?,
    })
}

const IMAGE_COLUMNS: &str =
    "id, generation_id, owner, object_key, width, height, content_type, bytes, created_at,
     source_image_id";

fn generation_from(row: &SqliteRow) -> Result<Generation, StoreError> {
    Ok(Generation {
        id: uuid(&row.try_get::<String, _>("id")?)?,
        job_id: uuid(&row.try_get::<String, _>("job_id")?)?,
        owner: uuid(&row.try_get::<String, _>("owner")?)?,
        prompt: row.try_get("prompt")?,
        model: row.try_get("model")?,
        width: row.try_get::<i64, _>("width")? as u32,
        height: row.try_get::<i64, _>("height")? as u32,
        n: row.try_get::<i64, _>("n")? as u32,
        reference_urls: serde_json::from_str(&row.try_get::<String, _>("reference_urls")?)
            .map_err(|e| StoreError::Corrupt(format!("generation reference_urls: {e}")))?,
        created_at: time(row.try_get("created_at")?)?,
    })
}

fn image_from(row: &SqliteRow) -> Result<ImageRecord, StoreError> {
    Ok(ImageRecord {
        id: uuid(&row.try_get::<String, _>("id")?)?,
        generation_id: uuid(&row.try_get::<String, _>("generation_id")?)?,
        owner: uuid(&row.try_get::<String, _>("owner")?)?,
        object_key: row.try_get("object_key")?,
        width: row.try_get::<i64, _>("width")? as u32,
        height: row.try_get::<i64, _>("height")? as u32,
        content_type: row.try_get("content_type")?,
        bytes: row.try_get("bytes")?,
        created_at: time(row.try_get("created_at")?)?,
        source_image_id: row
            .try_get::<Option<String>, _>("source_image_id")?
            .as_deref()
            .map(uuid)
            .transpose()?,
    })
}

impl SqliteStore {
    async fn generation_where(
        &self,
        column: &'static str,
        id: Uuid,
    ) -> Result<Option<Generation>, StoreError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE {column} = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(generation_from).transpose()
    }
}

#[async_trait]
impl Generations for SqliteStore {
    async fn create_generation(&self, g: NewGeneration) -> Result<GenerationEnqueued, StoreError> {
        let id = Uuid::now_v7();
        let mut job = NewJob::of(&GenerateImage { generation_id: id })?.owner(g.owner.to_string());
        job.idempotency_key = g.idempotency_key.clone();
        let queue = job.queue.clone();
        let mut tx = self.writer.begin().await?;
        let enqueued = SqliteStore::enqueue_in(&mut tx, job).await?;
        if !enqueued.created {
            let hash: Option<String> =
                sqlx::query_scalar("SELECT request_hash FROM generations WHERE job_id = ?")
                    .bind(enqueued.id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(if hash.as_deref() == Some(g.request_hash.as_str()) {
                GenerationEnqueued::Existing {
                    job_id: enqueued.id,
                }
            } else {
                GenerationEnqueued::KeyReused
            });
        }
        sqlx::query(
            "INSERT INTO generations (id, job_id, owner, prompt, model, width, height, n,
                                     request_hash, created_at, reference_urls)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(enqueued.id.to_string())
        .bind(g.owner.to_string())
        .bind(&g.prompt)
        .bind(&g.model)
        .bind(i64::from(g.width))
        .bind(i64::from(g.height))
        .bind(i64::from(g.n))
        .bind(&g.request_hash)
        .bind(now_ms())
        .bind(serde_json::json!(g.reference_urls).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify_available(&queue);
        Ok(GenerationEnqueued::Created {
            job_id: enqueued.id,
        })
    }

    async fn generation(&self, id: Uuid) -> Result<Option<Generation>, StoreError> {
        self.generation_where("id", id).await
    }

    async fn generation_for_job(&self, job_id: Uuid) -> Result<Option<Generation>, StoreError> {
        self.generation_where("job_id", job_id).await
    }

    async fn finish_generation(
        &self,
        id: Uuid,
        provider: &str,
        provider_latency_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE generations SET provider = ?, provider_latency_ms = ?, finished_at = ?
             WHERE id = ?",
        )
        .bind(provider)
        .bind(provider_latency_ms.min(i64::MAX as u64) as i64)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn add_image(&self, image: &ImageRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO images (id, generation_id, owner, object_key, width, height,
                                 content_type, bytes, created_at, source_image_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(image.id.to_string())
        .bind(image.generation_id.to_string())
        .bind(image.owner.to_string())
        .bind(&image.object_key)
        .bind(i64::from(image.width))
        .bind(i64::from(image.height))
        .bind(&image.content_type)
        .bind(image.bytes)
        .bind(image.created_at.timestamp_millis())
        .bind(image.source_image_id.map(|id| id.to_string()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn record_moderation(&self, d: &ModerationRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO moderation_decisions (id, owner, generation_id, subject, provider,
                                               allowed, categories, scores, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(d.id.to_string())
        .bind(d.owner.to_string())
        .bind(d.generation_id.map(|g| g.to_string()))
        .bind(d.subject.as_str())
        .bind(&d.provider)
        .bind(d.allowed)
        .bind(serde_json::json!(d.categories).to_string())
        .bind(serde_json::json!(d.scores).to_string())
        .bind(d.created_at.timestamp_millis())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn moderation_of_generation(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<ModerationRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, owner, generation_id, subject, provider, allowed, categories, scores,
                    created_at
             FROM moderation_decisions WHERE generation_id = ? ORDER BY created_at, id",
        )
        .bind(generation_id.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(moderation_from).collect()
    }

    async fn images_of_generation(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE generation_id = ? AND source_image_id IS NULL AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(generation_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(image_from).collect()
    }

    async fn delete_images_of_generation(&self, generation_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM images WHERE generation_id = ? AND source_image_id IS NULL")
            .bind(generation_id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn images_of_owner(
        &self,
        owner: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE owner = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(before.map(|b| b.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(image_from).collect()
    }

    async fn delete_image(&self, id: Uuid, owner: Uuid) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "UPDATE images SET deleted_at = ?3
             WHERE id = ?1 AND owner = ?2 AND deleted_at IS NULL
             RETURNING {IMAGE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(owner.to_string())
            .bind(now_ms())
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(image_from).transpose()
    }

    async fn image(&self, id: Uuid, owner: Uuid) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = ? AND owner = ? AND deleted_at IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(owner.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(image_from).transpose()
    }

    async fn jobs_of_owner(
        &self,
        owner: Uuid,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM jobs
             WHERE owner = ?1 AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR kind = ?3)
               AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(filter.state.map(|s| s.as_str()))
            .bind(&filter.kind)
            .bind(filter.before.map(|b| b.to_string()))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(record_from).collect()
    }

    async fn images_of_generations(
        &self,
        generation_ids: &[Uuid],
    ) -> Result<Vec<ImageRecord>, StoreError> {
        // The ids travel as one JSON array, whatever their number.
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE generation_id IN (SELECT value FROM json_each(?))
               AND source_image_id IS NULL AND deleted_at IS NULL
             ORDER BY generation_id, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(generation_ids).to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(image_from).collect()
    }

    async fn images_by_ids(
        &self,
        ids: &[Uuid],
        owner: Uuid,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE id IN (SELECT value FROM json_each(?1)) AND owner = ?2 AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(ids).to_string())
            .bind(owner.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(image_from).collect()
    }
}
