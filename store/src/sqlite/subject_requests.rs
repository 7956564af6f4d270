use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kiln_jobs::UserId;
use uuid::Uuid;

use super::{SqliteStore, now_ms};
use crate::{
    StoreError,
    codec::{Id, Time},
    subject_requests::{
        NewRequest, REQUEST_COLUMNS, RequestKind, RequestRow, SubjectRequest, SubjectRequests, due,
        requests,
    },
};

#[async_trait]
impl SubjectRequests for SqliteStore {
    async fn record_request(&self, r: NewRequest) -> Result<Option<Uuid>, StoreError> {
        let (id, now) = (Uuid::now_v7(), Utc::now());
        let inserted = sqlx::query(
            "INSERT INTO subject_requests (id, user_id, kind, job_id, requested_at, due_at, completed_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
             WHERE (?3 <> 'access' OR NOT EXISTS (
                 SELECT 1 FROM subject_requests WHERE user_id = ?2 AND kind = 'access'
                     AND requested_at > ?5 - 86400000))
               AND (?4 IS NULL OR NOT EXISTS (
                 SELECT 1 FROM subject_requests WHERE job_id = ?4))",
        )
        .bind(Id(id))
        .bind(Id(r.user.0))
        .bind(r.kind.as_str())
        .bind(r.job_id.map(Id))
        .bind(Time(now))
        .bind(Time(due(now)))
        .bind(r.answered.then_some(Time(now)))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok((inserted == 1).then_some(id))
    }

    async fn answer_requests(&self, user: UserId, kind: RequestKind) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE subject_requests SET completed_at = ?3
             WHERE user_id = ?1 AND kind = ?2 AND completed_at IS NULL",
        )
        .bind(Id(user.0))
        .bind(kind.as_str())
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn answer_requests_of_job(&self, job_id: Uuid) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE subject_requests SET completed_at = ?2
             WHERE job_id = ?1 AND completed_at IS NULL",
        )
        .bind(Id(job_id))
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn subject_requests(
        &self,
        overdue_at: Option<DateTime<Utc>>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<SubjectRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM subject_requests
             WHERE (?1 IS NULL OR (completed_at IS NULL AND due_at < ?1))
               AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        );
        let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(overdue_at.map(Time))
            .bind(before.map(Id))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        requests(rows)
    }

    async fn overdue_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM subject_requests WHERE completed_at IS NULL AND due_at < ?1",
        )
        .bind(Time(now))
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }
}
