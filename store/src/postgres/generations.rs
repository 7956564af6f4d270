use async_trait::async_trait;
use kiln_jobs::UserId;
use uuid::Uuid;

use super::PgStore;
use crate::{
    JobRecord, StoreError,
    generations::{Generation, Generations, ImageRecord, JobFilter, ModerationRecord},
    rows::{
        self, GENERATION_COLUMNS, GenerationRow, IMAGE_COLUMNS, ImageRow, JOB_COLUMNS, JobRow,
        MODERATION_COLUMNS, ModerationRow,
    },
};

impl PgStore {
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
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE owner = $1 AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR id < $4)
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
