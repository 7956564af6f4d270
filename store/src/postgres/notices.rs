use async_trait::async_trait;
use kiln_jobs::{Broadcast, UserId};
use uuid::Uuid;

use super::PgStore;
use crate::{
    NewJob, StoreError,
    codec::Time,
    notices::{
        Audience, FanOutBatch, Notices, POLICY_COLUMNS, PolicyRow, PolicyVersion, SECURITY_COLUMNS,
        SecurityNotice, SecurityRow, count, json, notice_job,
    },
};

impl PgStore {
    /// Whom a broadcast goes to; None when its security notice is gone.
    async fn audience(&self, broadcast: &Broadcast) -> Result<Option<Audience>, StoreError> {
        Ok(match broadcast {
            Broadcast::Policy { .. } => Some(Audience::POLICY),
            Broadcast::Security { notice_id } => {
                sqlx::query_scalar::<_, bool>("SELECT everyone FROM security_notices WHERE id = $1")
                    .bind(notice_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(Audience::security)
            }
        })
    }
}

#[async_trait]
impl Notices for PgStore {
    async fn publish_policy(
        &self,
        v: &PolicyVersion,
        fan_out: NewJob,
    ) -> Result<Option<Uuid>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO policy_versions (version, effective_at, summary, published_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
        )
        .bind(&v.version)
        .bind(v.effective_at)
        .bind(json(&v.summary))
        .bind(v.published_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let job = PgStore::enqueue_in(&mut tx, fan_out).await?;
        tx.commit().await?;
        Ok(Some(job.id))
    }

    async fn policy_versions(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        let sql =
            format!("SELECT {POLICY_COLUMNS} FROM policy_versions ORDER BY published_at DESC");
        let rows: Vec<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(PolicyVersion::try_from).collect()
    }

    async fn policy_version(&self, version: &str) -> Result<Option<PolicyVersion>, StoreError> {
        let sql = format!("SELECT {POLICY_COLUMNS} FROM policy_versions WHERE version = $1");
        let row: Option<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(PolicyVersion::try_from).transpose()
    }

    async fn pending_policy(&self, user: UserId) -> Result<Option<PolicyVersion>, StoreError> {
        let row: Option<PolicyRow> = sqlx::query_as(
            "SELECT v.version, v.effective_at, v.summary, v.published_at
             FROM users u JOIN policy_versions v ON v.published_at > u.created_at
             WHERE u.id = $1 AND v.published_at > coalesce(
                 (SELECT a.published_at FROM policy_versions a WHERE a.version = u.policy_acked),
                 '-infinity')
             ORDER BY v.published_at DESC LIMIT 1",
        )
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(PolicyVersion::try_from).transpose()
    }

    async fn acknowledge_policy(&self, user: UserId, version: &str) -> Result<bool, StoreError> {
        let Some(acked) = self.policy_version(version).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE users SET policy_acked = $2
             WHERE id = $1 AND (policy_acked IS NULL OR $3 >
                 (SELECT published_at FROM policy_versions WHERE version = users.policy_acked))",
        )
        .bind(user.0)
        .bind(version)
        .bind(Time(acked.published_at))
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    async fn record_security_notice(
        &self,
        n: &SecurityNotice,
        audience: &[UserId],
        fan_out: NewJob,
    ) -> Result<Uuid, StoreError> {
        let mut tx = self.pool.begin().await?;
        let job = PgStore::enqueue_in(&mut tx, fan_out).await?;
        sqlx::query(
            "INSERT INTO security_notices (id, subject, body, everyone, created_at, job_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(n.id)
        .bind(json(&n.subject))
        .bind(json(&n.body))
        .bind(n.everyone)
        .bind(n.created_at)
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = audience.iter().map(|u| u.0).collect();
        sqlx::query(
            "INSERT INTO notice_audience (notice, user_id)
             SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(format!("security:{}", n.id))
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(job.id)
    }

    async fn security_notice(&self, id: Uuid) -> Result<Option<SecurityNotice>, StoreError> {
        let sql = format!("SELECT {SECURITY_COLUMNS} FROM security_notices WHERE id = $1");
        let row: Option<SecurityRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(SecurityNotice::try_from).transpose()
    }

    async fn fan_out(
        &self,
        broadcast: &Broadcast,
        limit: u32,
    ) -> Result<Option<FanOutBatch>, StoreError> {
        let Some(audience) = self.audience(broadcast).await? else {
            return Ok(None);
        };
        let key = broadcast.key();
        let mut tx = self.pool.begin().await?;
        let next: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT u.id, u.email_index IS NOT NULL FROM users u
             WHERE u.deleted_at IS NULL AND u.verified_at IS NOT NULL
               AND ($2 OR u.restricted_at IS NULL)
               AND (NOT $3 OR EXISTS (
                   SELECT 1 FROM notice_audience a WHERE a.notice = $1 AND a.user_id = u.id))
               AND u.id > coalesce((
                   -- The last account a run recorded: where the next goes on.
                   SELECT user_id FROM notice_recipients WHERE notice = $1
                   ORDER BY user_id DESC LIMIT 1),
                                   '00000000-0000-0000-0000-000000000000')
             ORDER BY u.id LIMIT $4",
        )
        .bind(&key)
        .bind(audience.restricted_too)
        .bind(audience.listed)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if next.is_empty() {
            return Ok(Some(FanOutBatch {
                done: true,
                ..FanOutBatch::default()
            }));
        }
        let ids: Vec<Uuid> = next.iter().map(|(id, _)| *id).collect();
        // A run racing this one waits here for the other's commit, then
        // skips whom it recorded.
        let claimed: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO notice_recipients (notice, user_id, queued_at)
             SELECT $1, unnest($2::uuid[]), now()
             ON CONFLICT DO NOTHING RETURNING user_id",
        )
        .bind(&key)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let jobs = next
            .into_iter()
            .filter(|(id, _)| claimed.contains(id))
            .map(|(id, by_email)| notice_job(broadcast, UserId(id), by_email))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = count(&jobs);
        PgStore::enqueue_many_in(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(Some(batch))
    }

    async fn recipients(&self, broadcast: &Broadcast) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notice_recipients WHERE notice = $1")
            .bind(broadcast.key())
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}
