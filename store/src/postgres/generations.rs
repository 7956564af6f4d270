use async_trait::async_trait;
use kiln_jobs::GenerateImage;
use sqlx::{Row, postgres::PgRow};
use uuid::Uuid;

use super::{PgStore, RECORD_COLUMNS, record_from};
use crate::{
    JobRecord, NewJob, StoreError,
    generations::{
        Generation, GenerationEnqueued, Generations, ImageRecord, JobFilter, ModerationRecord,
        ModerationSubject, NewGeneration,
    },
};

const GENERATION_COLUMNS: &str =
    "id, job_id, owner, prompt, model, width, height, n, reference_urls, created_at";

fn generation_from(row: &PgRow) -> Result<Generation, StoreError> {
    Ok(Generation {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        owner: row.try_get("owner")?,
        prompt: row.try_get("prompt")?,
        model: row.try_get("model")?,
        width: row.try_get::<i32, _>("width")? as u32,
        height: row.try_get::<i32, _>("height")? as u32,
        n: row.try_get::<i32, _>("n")? as u32,
        reference_urls: serde_json::from_value(row.try_get("reference_urls")?)
            .map_err(|e| StoreError::Corrupt(format!("generation reference_urls: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn moderation_from(row: &PgRow) -> Result<ModerationRecord, StoreError> {
    let subject: String = row.try_get("subject")?;
    Ok(ModerationRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        generation_id: row.try_get("generation_id")?,
        subject: ModerationSubject::parse(&subject).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown moderation subject {subject:?}"))
        })?,
        provider: row.try_get("provider")?,
        allowed: row.try_get("allowed")?,
        categories: serde_json::from_value(row.try_get("categories")?)
            .map_err(|e| StoreError::Corrupt(format!("moderation categories: {e}")))?,
        scores: serde_json::from_value(row.try_get("scores")?)
            .map_err(|e| StoreError::Corrupt(format!("moderation scores: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn image_from(row: &PgRow) -> Result<ImageRecord, StoreError> {
    Ok(ImageRecord {
        id: row.try_get("id")?,
        generation_id: row.try_get("generation_id")?,
        owner: row.try_get("owner")?,
        object_key: row.try_get("object_key")?,
        width: row.try_get::<i32, _>("width")? as u32,
        height: row.try_get::<i32, _>("height")? as u32,
        content_type: row.try_get("content_type")?,
        bytes: row.try_get("bytes")?,
        created_at: row.try_get("created_at")?,
        source_image_id: row.try_get("source_image_id")?,
    })
}

const IMAGE_COLUMNS: &str =
    "id, generation_id, owner, object_key, width, height, content_type, bytes, created_at,
     source_image_id";

impl PgStore {
    async fn generation_where(
        &self,
        column: &'static str,
        id: Uuid,
    ) -> Result<Option<Generation>, StoreError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE {column} = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(generation_from).transpose()
    }
}

#[async_trait]
impl Generations for PgStore {
    async fn create_generation(&self, g: NewGeneration) -> Result<GenerationEnqueued, StoreError> {
        let id = Uuid::now_v7();
        let mut job = NewJob::of(&GenerateImage { generation_id: id })?.owner(g.owner.to_string());
        job.idempotency_key = g.idempotency_key.clone();
        let mut tx = self.pool.begin().await?;
        let enqueued = PgStore::enqueue_in(&mut tx, job).await?;
        if !enqueued.created {
            tx.rollback().await?;
            let hash: Option<String> =
                sqlx::query_scalar("SELECT request_hash FROM generations WHERE job_id = $1")
                    .bind(enqueued.id)
                    .fetch_optional(&self.pool)
                    .await?;
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
                                      request_hash, reference_urls)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(enqueued.id)
        .bind(g.owner)
        .bind(&g.prompt)
        .bind(&g.model)
        .bind(g.width as i32)
        .bind(g.height as i32)
        .bind(g.n as i32)
        .bind(&g.request_hash)
        .bind(serde_json::json!(g.reference_urls))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
            "UPDATE generations SET provider = $2, provider_latency_ms = $3, finished_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(provider)
        .bind(provider_latency_ms.min(i32::MAX as u64) as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn add_image(&self, image: &ImageRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO images (id, generation_id, owner, object_key, width, height,
                                 content_type, bytes, created_at, source_image_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(image.id)
        .bind(image.generation_id)
        .bind(image.owner)
        .bind(&image.object_key)
        .bind(image.width as i32)
        .bind(image.height as i32)
        .bind(&image.content_type)
        .bind(image.bytes)
        .bind(image.created_at)
        .bind(image.source_image_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_moderation(&self, d: &ModerationRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO moderation_decisions (id, owner, generation_id, subject, provider,
                                               allowed, categories, scores, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(d.id)
        .bind(d.owner)
        .bind(d.generation_id)
        .bind(d.subject.as_str())
        .bind(&d.provider)
        .bind(d.allowed)
        .bind(serde_json::json!(d.categories))
        .bind(serde_json::json!(d.scores))
        .bind(d.created_at)
        .execute(&self.pool)
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
             FROM moderation_decisions WHERE generation_id = $1 ORDER BY created_at, id",
        )
        .bind(generation_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(moderation_from).collect()
    }

    async fn images_of_generation(
        &self,
        generation_id: Uuid,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE generation_id = $1 AND source_image_id IS NULL AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(generation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(image_from).collect()
    }

    async fn delete_images_of_generation(&self, generation_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM images WHERE generation_id = $1 AND source_image_id IS NULL")
            .bind(generation_id)
            .execute(&self.pool)
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
             WHERE owner = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(image_from).collect()
    }

    async fn delete_image(&self, id: Uuid, owner: Uuid) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "UPDATE images SET deleted_at = now()
             WHERE id = $1 AND owner = $2 AND deleted_at IS NULL
             RETURNING {IMAGE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(image_from).transpose()
    }

    async fn image(&self, id: Uuid, owner: Uuid) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1 AND owner = $2 AND deleted_at IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
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
             WHERE owner = $1 AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(filter.state.map(|s| s.as_str()))
            .bind(&filter.kind)
            .bind(filter.before)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from).collect()
    }

    async fn images_of_generations(
        &self,
        generation_ids: &[Uuid],
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE generation_id = ANY($1) AND source_image_id IS NULL AND deleted_at IS NULL
             ORDER BY generation_id, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(generation_ids)
            .fetch_all(&self.pool)
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
             WHERE id = ANY($1) AND owner = $2 AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(image_from).collect()
    }
}
