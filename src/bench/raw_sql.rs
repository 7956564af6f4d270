//! The database's own limit for this work: a minimal queue table and a
//! claim loop with `FOR UPDATE SKIP LOCKED`, no payload decoding, leases,
//! metrics or error history.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;

/// Time for `connections` loops claiming `batch` rows at a time (and
/// marking them done in one statement) to drain `jobs` rows.
pub async fn postgres_skip_locked(
    url: &str,
    jobs: u32,
    batch: u32,
    connections: u32,
) -> anyhow::Result<Duration> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    sqlx::query(
        "CREATE TABLE raw_jobs (
             id bigserial PRIMARY KEY,
             state smallint NOT NULL DEFAULT 0,
             payload jsonb NOT NULL DEFAULT '{}',
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE INDEX raw_jobs_pending ON raw_jobs (id) WHERE state = 0")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO raw_jobs (payload) SELECT '{}' FROM generate_series(1, $1)")
        .bind(i64::from(jobs))
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE raw_jobs").execute(&pool).await?;
    super::checkpoint(url).await?;

    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let pool = pool.clone();
        loops.spawn(async move {
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "UPDATE raw_jobs SET state = 1 WHERE id IN (
                         SELECT id FROM raw_jobs WHERE state = 0 ORDER BY id
                         LIMIT $1 FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                )
                .bind(i64::from(batch))
                .fetch_all(&pool)
                .await?;
                if ids.is_empty() {
                    return Ok::<_, sqlx::Error>(());
                }
                sqlx::query("UPDATE raw_jobs SET state = 2 WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&pool)
                    .await?;
            }
        });
    }
    while let Some(r) = loops.join_next().await {
        r??;
    }
    let took = started.elapsed();
    pool.close().await;
    Ok(took)
}
