//! Which database errors are "unavailable for a moment" (the API answers
//! 503 with `Retry-After`, a worker tries again) rather than a fault: the
//! codes Postgres itself raises while it restarts, is full of connections
//! or has become a standby.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use kiln_store::{StoreError, testing::TestDatabase};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_server_restarting_full_or_read_only_is_unavailable_not_a_fault() {
    let db = TestDatabase::postgres().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    for (condition, unavailable) in [
        ("admin_shutdown", true),
        ("crash_shutdown", true),
        ("cannot_connect_now", true),
        ("too_many_connections", true),
        ("read_only_sql_transaction", true),
        ("unique_violation", false),
        ("undefined_table", false),
        ("division_by_zero", false),
    ] {
        let raised = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{condition}'; END $$"
        )))
        .execute(&mut conn)
        .await
        .unwrap_err();
        let error = StoreError::from(raised);
        assert_eq!(error.is_unavailable(), unavailable, "{condition}: {error}");
    }
}
