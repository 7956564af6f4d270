use async_trait::async_trait;
use kiln_jobs::UserId;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::{
    JobRecord, StoreError,
    generations::{
        BatchEnqueued, Generation, GenerationInput, Generations, ImageRecord, JobFilter,
        ModerationRecord, NewGenerationBatch, NewGenerationRow,
    },
    rows::{
        self, GENERATION_COLUMNS, GenerationRow, IMAGE_COLUMNS, ImageRow, JOB_COLUMNS, JobRow,
        MODERATION_COLUMNS, ModerationRow,
    },
};

/// Inserts generations of `owner` with one statement, inside the caller's
/// transaction; in a batch, each keeps its position in the batch.
pub(super) async fn insert_generations(
    tx: &mut PgConnection,
    owner: UserId,
    batch: Option<Uuid>,
    rows: &[NewGenerationRow<'_>],
) -> Result<(), StoreError> {
    let column = |f: fn(&NewGenerationRow) -> i32| rows.iter().map(f).collect::<Vec<i32>>();
    let texts =
        |f: fn(&GenerationInput) -> &str| rows.iter().map(|r| f(r.input)).collect::<Vec<&str>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let job_ids: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
    let references: Vec<String> = rows
        .iter()
        .map(|r| serde_json::json!(r.input.reference_urls).to_string())
        .collect();
    let positions: Vec<i32> = (0..rows.len() as i32).collect();
    sqlx::query(
        "INSERT INTO generations (id, job_id, owner, prompt, model, width, height, n,
                                  request_hash, reference_urls, batch_id, batch_position)
         SELECT id, job_id, $3, prompt, model, width, height, n, request_hash,
                reference_urls::jsonb, $11::uuid, CASE WHEN $11::uuid IS NULL THEN NULL ELSE position END
         FROM unnest($1::uuid[], $2::uuid[], $4::text[], $5::text[], $6::int[], $7::int[],
                     $8::int[], $9::text[], $10::text[], $12::int[])
              AS t(id, job_id, prompt, model, width, height, n, request_hash, reference_urls,
                   position)",
    )
    .bind(&ids)
    .bind(&job_ids)
    .bind(owner.0)
    .bind(texts(|i| &i.prompt))
    .bind(texts(|i| &i.model))
    .bind(column(|r| r.input.width as i32))
    .bind(column(|r| r.input.height as i32))
    .bind(column(|r| r.input.n as i32))
    .bind(texts(|i| &i.request_hash))
    .bind(&references)
    .bind(batch)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl PgStore {
    /// The answer to a batch whose idempotency key was used before: the
    /// first batch's jobs when the request is the same.
    pub(super) async fn existing_batch(
        &self,
        b: &NewGenerationBatch,
    ) -> Result<BatchEnqueued, StoreError> {
        let first: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, request_hash FROM generation_batches
             WHERE owner = $1 AND idempotency_key = $2",
        )
        .bind(b.owner.0)
        .bind(&b.idempotency_key)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, hash)) = first else {
            // Not there after the conflict: the first request rolled back.
            return Err(StoreError::Contended);
        };
        if hash != b.request_hash {
            return Ok(BatchEnqueued::KeyReused);
        }
        let job_ids = sqlx::query_scalar(
            "SELECT job_id FROM generations WHERE batch_id = $1 ORDER BY batch_position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(BatchEnqueued::Existing { job_ids })
    }

    async fn generation_where(
        &self,
        column: &'static str,
        id: Uuid,
    ) -> Result<Option<Generation>, StoreError> {
        let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE {column} = $1");
        let row: Option<GenerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Generation::try_from).transpose()
    }
}

#[async_trait]
impl Generations for PgStore {
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
        .bind(image.owner.0)
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
        .bind(d.owner.0)
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
        let sql = format!(
            "SELECT {MODERATION_COLUMNS} FROM moderation_decisions
             WHERE generation_id = $1 ORDER BY created_at, id"
        );
        let rows: Vec<ModerationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(generation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(ModerationRecord::try_from).collect()
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
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(generation_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows::images(rows))
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
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE owner = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.0)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows::images(rows))
    }

    async fn delete_image(
        &self,
        id: Uuid,
        owner: UserId,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "UPDATE images SET deleted_at = now()
             WHERE id = $1 AND owner = $2 AND deleted_at IS NULL
             RETURNING {IMAGE_COLUMNS}"
        );
        let row: Option<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(ImageRecord::from))
    }

    async fn image(&self, id: Uuid, owner: UserId) -> Result<Option<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1 AND owner = $2 AND deleted_at IS NULL"
        );
        let row: Option<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(owner.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(ImageRecord::from))
    }

    async fn jobs_of_owner(
        &self,
        owner: UserId,
        filter: &JobFilter,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // Newest first from each table (each an index scan on its owner
        // index), then merged; one statement, so a job moving between
        // them meanwhile is listed once. The cursor defaults to the largest
        // uuid rather than `$4 IS NULL OR …`, so it is an index condition
        // and a deep page does not walk the owner's newer jobs.
        let filter_sql = "owner = $1 AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR kind = $3)
               AND id < coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
             ORDER BY id DESC LIMIT $5";
        let sql = format!(
            "(SELECT {JOB_COLUMNS} FROM jobs WHERE {filter_sql})
             UNION ALL (SELECT {JOB_COLUMNS} FROM finished_jobs WHERE {filter_sql})
             ORDER BY id DESC LIMIT $5"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner.to_string())
            .bind(filter.state.map(|s| s.as_str()))
            .bind(&filter.kind)
            .bind(filter.before)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows::jobs(rows)
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
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(generation_ids)
            .fetch_all(&self.pool)
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
             WHERE id = ANY($1) AND owner = $2 AND deleted_at IS NULL
             ORDER BY id"
        );
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .bind(owner.0)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows::images(rows))
    }
}
