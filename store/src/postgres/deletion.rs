use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use super::PgStore;
use crate::{
    NewJob, StoreError,
    deletion::{AccountDeleted, Deletion, NOBODY, StoredGeneration, StoredImage, tombstone},
};

impl PgStore {
    pub(super) async fn delete_account_in_db(
        &self,
        user: UserId,
        purge: NewJob,
    ) -> Result<Option<AccountDeleted>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let hidden = sqlx::query(
            "UPDATE users SET deleted_at = now(),
                 email_index = CASE WHEN email_index IS NULL THEN NULL ELSE $2 END,
                 phone_index = CASE WHEN phone_index IS NULL THEN NULL ELSE $2 END
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user.0)
        .bind(tombstone(user))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if hidden == 0 {
            return Ok(None);
        }
        // Every process forgets these sessions when this commits (see
        // `revoke_session_row`).
        let revoked: Vec<String> = sqlx::query_scalar(
            "WITH gone AS (
                 UPDATE sessions SET revoked_at = now()
                 WHERE user_id = $1 AND revoked_at IS NULL
                 RETURNING token_hash)
             SELECT g.token_hash FROM gone g CROSS JOIN LATERAL (SELECT pg_notify($2, g.token_hash)) n",
        )
        .bind(user.0)
        .bind(super::SESSION_CHANNEL)
        .fetch_all(&mut *tx)
        .await?;
        let purge = PgStore::enqueue_in(&mut tx, purge).await?;
        // Registered with the deletion, answered by the erasure.
        let now = Utc::now();
        sqlx::query(
            "INSERT INTO subject_requests (id, user_id, kind, job_id, requested_at, due_at)
             VALUES ($1, $2, 'deletion', $3, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(user.0)
        .bind(purge.id)
        .bind(now)
        .bind(crate::subject_requests::due(now))
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
impl Deletion for PgStore {
    async fn password_hash(&self, user: UserId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT password_hash FROM users WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn unfinished_jobs_of(
        &self,
        owner: UserId,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT id, kind FROM jobs WHERE owner = $1 ORDER BY id LIMIT $2")
                .bind(owner.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn images_to_erase(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredImage>, StoreError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT i.id, i.object_key FROM images i JOIN users u ON u.id = i.owner
             WHERE i.owner = $1 AND u.deleted_at IS NOT NULL ORDER BY i.id LIMIT $2",
        )
        .bind(user.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, object_key)| StoredImage { id, object_key })
            .collect())
    }

    async fn erase_images(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // An upscale points at its source: let go first, in any order.
        sqlx::query("UPDATE images SET source_image_id = NULL WHERE source_image_id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        let erased = sqlx::query("DELETE FROM images WHERE owner = $1 AND id = ANY($2)")
            .bind(user.0)
            .bind(ids)
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
        let rows: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT g.id, g.reference_urls <> '[]'::jsonb FROM generations g
             JOIN users u ON u.id = g.owner
             WHERE g.owner = $1 AND u.deleted_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM images i WHERE i.generation_id = g.id)
             ORDER BY g.id LIMIT $2",
        )
        .bind(user.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, has_references)| StoredGeneration { id, has_references })
            .collect())
    }

    async fn erase_generations(&self, user: UserId, ids: &[Uuid]) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM generations WHERE owner = $1 AND id = ANY($2)")
                .bind(user.0)
                .bind(ids)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn erase_account_rows(&self, user: UserId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NOT NULL FOR UPDATE",
        )
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?;
        if deleted.is_none() {
            return Ok(false);
        }
        let owner = user.to_string();
        for sql in [
            "DELETE FROM generation_batches WHERE owner = $1",
            "DELETE FROM verification_codes WHERE user_id = $1",
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM account_ips WHERE user_id = $1",
            "DELETE FROM notice_recipients WHERE user_id = $1",
            "DELETE FROM notice_audience WHERE user_id = $1",
            "DELETE FROM credit_entries WHERE user_id = $1",
            "DELETE FROM credit_accounts WHERE user_id = $1",
            "UPDATE access_log SET user_id = NULL WHERE user_id = $1",
            "UPDATE payment_orders SET user_id = NULL WHERE user_id = $1",
            "UPDATE users SET referred_by = NULL WHERE referred_by = $1",
            // Erasure answers whatever the owner still waited for.
            "UPDATE subject_requests SET completed_at = coalesce(completed_at, now()), user_id = NULL
             WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user.0).execute(&mut *tx).await?;
        }
        for sql in [
            "DELETE FROM webhook_deliveries WHERE job_id IN
                 (SELECT job_id FROM webhooks WHERE owner = $1)",
            "DELETE FROM webhooks WHERE owner = $1",
            "DELETE FROM job_keys WHERE owner = $1",
            "DELETE FROM finished_jobs WHERE owner = $1",
            "DELETE FROM jobs WHERE owner = $1",
            "DELETE FROM jobs WHERE payload->>'user_id' = $1
                 AND owner IS NULL AND kind IN ('send_email', 'send_sms')",
            "DELETE FROM finished_jobs WHERE payload->>'user_id' = $1
                 AND owner IS NULL AND kind IN ('send_email', 'send_sms')",
        ] {
            sqlx::query(sql).bind(&owner).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE moderation_decisions SET owner = $2 WHERE owner = $1")
            .bind(user.0)
            .bind(NOBODY)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user.0)
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
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM users WHERE deleted_at < $1 ORDER BY deleted_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId).collect())
    }
}
