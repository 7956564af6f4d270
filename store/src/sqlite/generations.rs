use async_trait::async_trait;
use kiln_jobs::UserId;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::{SqliteStore, now_ms};
use crate::{
    JobRecord, StoreError,
    codec::Id,
    generations::{
        BatchEnqueued, Generation, Generations, ImageRecord, JobFilter, ModerationRecord,
        NewGenerationBatch, NewGenerationRow,
    },
    rows::{
        self, GENERATION_COLUMNS, GenerationRow, IMAGE_COLUMNS, ImageRow, JOB_COLUMNS, JobRow,
        MODERATION_COLUMNS, ModerationRow,
    },
};

/// Inserts generations of `owner` inside the caller's transaction; in a
/// batch, each keeps its position in the batch.
pub(super) async fn insert_generations(
    tx: &mut SqliteConnection,
    owner: UserId,
    batch: Option<Uuid>,
    rows: &[NewGenerationRow<'_>],
) -> Result<(), StoreError> {
    let now = now_ms();
    for (position, row) in rows.iter().enumerate() {
        let g = row.input;
        sqlx::query(
            "INSERT INTO generations (id, job_id, owner, prompt, model, width, height, n,
                                     request_hash, created_at, reference_urls, batch_id,
                                     batch_position)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.id.to_string())
        .bind(row.job_id.to_string())
        .bind(owner.to_string())
        .bind(&g.prompt)
        .bind(&g.model)
        .bind(i64::from(g.width))
        .bind(i64::from(g.height))
        .bind(i64::from(g.n))
        .bind(&g.request_hash)
        .bind(now)
        .bind(serde_json::json!(g.reference_urls).to_string())
        .bind(batch.map(|b| b.to_string()))
        .bind(batch.map(|_| position as i64))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The answer to a batch whose idempotency key was used before: the first
/// batch's jobs when the request is the same; `None` for a new key.
pub(super) async fn existing_batch(
    tx: &mut SqliteConnection,
    b: &NewGenerationBatch,
) -> Result<Option<BatchEnqueued>, StoreError> {
    let first: Option<(Id, String)> = sqlx::query_as(
        "SELECT id, request_hash FROM generation_batches WHERE owner = ? AND idempotency_key = ?",
    )
    .bind(b.owner.to_string())
    .bind(&b.idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, hash)) = first else {
        return Ok(None);
    };
    if hash != b.request_hash {
        return Ok(Some(BatchEnqueued::KeyReused));
    }
    let job_ids: Vec<Id> = sqlx::query_scalar(
        "SELECT job_id FROM generations WHERE batch_id = ? ORDER BY batch_position",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Some(BatchEnqueued::Existing {
        job_ids: job_ids.into_iter().map(|id| id.0).collect(),
    }))
}

impl SqliteStore {
    async fn generation_where(
        &self,
        column: &'static str,
        id: Uuid,
    ) -> Result<Option<Generation>, StoreError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE {column} = ?");
        let row: Option<GenerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.map(Generation::try_from).transpose()
    }
}

#[async_trait]
impl Generations for SqliteStore {
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
        let sql = format!(
            "SELECT {MODERATION_COLUMNS} FROM moderation_decisions
             WHERE generation_id = ? ORDER BY created_at, id"
        );
        let rows: Vec<ModerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(generation_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(ModerationRecord::try_from).collect()
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
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(generation_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        Ok(rows::images(rows))
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
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE owner = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        );
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(before.map(|b| b.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows::images(rows))
    }

    async fn delete_image(
        &self,
        id: Uuid,
        owner: UserId,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "UPDATE images SET deleted_at = ?3
             WHERE id = ?1 AND owner = ?2 AND deleted_at IS NULL
             RETURNING {IMAGE_COLUMNS}"
        );
        let row: Option<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(owner.to_string())
            .bind(now_ms())
            .fetch_optional(&self.writer)
            .await?;
        Ok(row.map(ImageRecord::from))
    }

    async fn image(&self, id: Uuid, owner: UserId) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = ? AND owner = ? AND deleted_at IS NULL"
        );
        let row: Option<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(owner.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(ImageRecord::from))
    }

    async fn jobs_of_owner(
        &self,
        owner: UserId,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // Newest first from each table (each on its owner index), then
        // merged. SQLite takes ORDER BY and LIMIT on a compound's parts only
        // inside subqueries.
        let filter_sql = "owner = ?1 AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR kind = ?3)
               AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5";
        let sql = format!(
            "SELECT * FROM (SELECT {JOB_COLUMNS} FROM jobs WHERE {filter_sql})
             UNION ALL SELECT * FROM (SELECT {JOB_COLUMNS} FROM finished_jobs WHERE {filter_sql})
             ORDER BY id DESC LIMIT ?5"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(filter.state.map(|s| s.as_str()))
            .bind(&filter.kind)
            .bind(filter.before.map(|b| b.to_string()))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.reader)
            .await?;
        rows::jobs(rows)
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
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(generation_ids).to_string())
            .fetch_all(&self.reader)
            .await?;
        Ok(rows::images(rows))
    }

    async fn images_by_ids(
        &self,
        ids: &[Uuid],
        owner: UserId,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE id IN (SELECT value FROM json_each(?1)) AND owner = ?2 AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::json!(ids).to_string())
            .bind(owner.to_string())
            .fetch_all(&self.reader)
            .await?;
        Ok(rows::images(rows))
    }
}
