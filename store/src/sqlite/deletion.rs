use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use super::{SqliteStore, now_ms};
use crate::{
    NewJob, StoreError,
    codec::{Id, Time},
    deletion::{AccountDeleted, Deletion, NOBODY, StoredGeneration, StoredImage, tombstone},
};

/// Ids travel as one JSON array, whatever their number.
fn json_ids(ids: &[Uuid]) -> String {
    serde_json::json!(ids).to_string()
}

impl SqliteStore {
    pub(super) async fn delete_account_in_db(
        &self,
        user: UserId,
        purge: NewJob,
    ) -> Result<Option<AccountDeleted>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let now = now_ms();
        let hidden = sqlx::query(
            "UPDATE users SET deleted_at = ?3,
                 email_index = CASE WHEN email_index IS NULL THEN NULL ELSE ?2 END,
                 phone_index = CASE WHEN phone_index IS NULL THEN NULL ELSE ?2 END
             WHERE id = ?1 AND deleted_at IS NULL",
        )
        .bind(user.to_string())
        .bind(tombstone(user))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if hidden == 0 {
            return Ok(None);
        }
        let revoked: Vec<String> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = ?2
             WHERE user_id = ?1 AND revoked_at IS NULL RETURNING token_hash",
        )
        .bind(user.to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let purge = SqliteStore::enqueue_in(&mut tx, purge).await?;
        // Registered with the deletion, answered by the erasure.
        let at = Utc::now();
        sqlx::query(
            "INSERT INTO subject_requests (id, user_id, kind, job_id, requested_at, due_at)
             VALUES (?1, ?2, 'deletion', ?3, ?4, ?5)",
        )
        .bind(Id(Uuid::now_v7()))
        .bind(Id(user.0))
        .bind(Id(purge.id))
        .bind(Time(at))
        .bind(Time(crate::subject_requests::due(at)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(AccountDeleted {
            purge_job: purge.id,
            revoked,
        }))
    }
}

#[async_trait]
impl Deletion for SqliteStore {
    async fn password_hash(&self, user: UserId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT password_hash FROM users WHERE id = ?1 AND deleted_at IS NULL",
        )
        .bind(user.to_string())
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn unfinished_jobs_of(
        &self,
        owner: UserId,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        let rows: Vec<(Id, String)> =
            sqlx::query_as("SELECT id, kind FROM jobs WHERE owner = ?1 ORDER BY id LIMIT ?2")
                .bind(owner.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        Ok(rows.into_iter().map(|(id, kind)| (id.0, kind)).collect())
    }

    async fn images_to_erase(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredImage>, StoreError> {
        let rows: Vec<(Id, String)> = sqlx::query_as(
            "SELECT i.id, i.object_key FROM images i JOIN users u ON u.id = i.owner
             WHERE i.owner = ?1 AND u.deleted_at IS NOT NULL ORDER BY i.id LIMIT ?2",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, object_key)| StoredImage {
                id: id.0,
                object_key,
            })
            .collect())
    }

    async fn erase_images(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError> {
        let ids = json_ids(ids);
        let mut tx = self.writer.begin().await?;
        // An upscale points at its source: let go first, in any order.
        sqlx::query(
            "UPDATE images SET source_image_id = NULL
             WHERE source_image_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let erased = sqlx::query(
            "DELETE FROM images WHERE owner = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(user.to_string())
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(erased)
    }

    async fn generations_to_erase(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredGeneration>, StoreError> {
        let rows: Vec<(Id, bool)> = sqlx::query_as(
            "SELECT g.id, g.reference_urls <> '[]' FROM generations g
             JOIN users u ON u.id = g.owner
             WHERE g.owner = ?1 AND u.deleted_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM images i WHERE i.generation_id = g.id)
             ORDER BY g.id LIMIT ?2",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, has_references)| StoredGeneration {
                id: id.0,
                has_references,
            })
            .collect())
    }

    async fn erase_generations(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM generations WHERE owner = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(user.to_string())
        .bind(json_ids(ids))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn erase_account_rows(&self, user: UserId) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let user_text = user.to_string();
        let deleted: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM users WHERE id = ?1 AND deleted_at IS NOT NULL")
                .bind(&user_text)
                .fetch_optional(&mut *tx)
                .await?;
        if deleted.is_none() {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM generation_batches WHERE owner = ?1",
            "DELETE FROM verification_codes WHERE user_id = ?1",
            "DELETE FROM sessions WHERE user_id = ?1",
            "DELETE FROM account_ips WHERE user_id = ?1",
            "DELETE FROM notice_recipients WHERE user_id = ?1",
            "DELETE FROM notice_audience WHERE user_id = ?1",
            "DELETE FROM credit_entries WHERE user_id = ?1",
            "DELETE FROM credit_accounts WHERE user_id = ?1",
            "UPDATE access_log SET user_id = NULL WHERE user_id = ?1",
            "UPDATE payment_orders SET user_id = NULL WHERE user_id = ?1",
            "UPDATE users SET referred_by = NULL WHERE referred_by = ?1",
            "DELETE FROM webhook_deliveries WHERE job_id IN
                 (SELECT job_id FROM webhooks WHERE owner = ?1)",
            "DELETE FROM webhooks WHERE owner = ?1",
            "DELETE FROM job_keys WHERE owner = ?1",
            "DELETE FROM finished_jobs WHERE owner = ?1",
            "DELETE FROM jobs WHERE owner = ?1",
            "DELETE FROM jobs WHERE json_extract(payload, '$.user_id') = ?1
                 AND owner IS NULL AND kind IN ('send_email', 'send_sms')",
            "DELETE FROM finished_jobs WHERE json_extract(payload, '$.user_id') = ?1
                 AND owner IS NULL AND kind IN ('send_email', 'send_sms')",
        ] {
            sqlx::query(sql).bind(&user_text).execute(&mut *tx).await?;
        }
        // Erasure answers whatever the owner still waited for.
        sqlx::query(
            "UPDATE subject_requests SET completed_at = coalesce(completed_at, ?2), user_id = NULL
             WHERE user_id = ?1",
        )
        .bind(&user_text)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE moderation_decisions SET owner = ?2 WHERE owner = ?1")
            .bind(&user_text)
            .bind(NOBODY.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = ?1")
            .bind(&user_text)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn deleted_accounts(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<Id> = sqlx::query_scalar(
            "SELECT id FROM users WHERE deleted_at < ?1 ORDER BY deleted_at LIMIT ?2",
        )
        .bind(Time(before))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().map(|id| UserId(id.0)).collect())
    }
}
