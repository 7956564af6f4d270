//! Throwaway databases for one measurement each.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

pub struct Database {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin: String, name: String },
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

impl Database {
    pub async fn postgres(admin: &str) -> anyhow::Result<Database> {
        let name = format!("kiln_bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .context("connecting to the bench Postgres server (--postgres)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let (base, _) = admin
            .rsplit_once('/')
            .context("--postgres must end in /<database>")?;
        Ok(Database {
            url: format!("{base}/{name}"),
            cleanup: Cleanup::Postgres {
                admin: admin.to_owned(),
                name,
            },
        })
    }

    pub fn sqlite() -> anyhow::Result<Database> {
        let dir = tempfile::tempdir()?;
        Ok(Database {
            url: format!("sqlite:{}", dir.path().join("bench.db").display()),
            cleanup: Cleanup::Sqlite(dir),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin, name } = &self.cleanup {
            let (admin, name) = (admin.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}
