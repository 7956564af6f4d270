//! Test helpers: each test gets a database of its own, so tests run in
//! parallel against the machine's real PostgreSQL (and a temp SQLite file).
//!
//! The Postgres server is `KILN_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.
//!
//! [`both_databases!`](crate::both_databases) runs each named test once on
//! each engine, so every suite that touches storage proves both.

use sqlx::{Connection, PgConnection};

use crate::{
    ConnectOptions, Store, StoreError,
    accounts::{Identifier, NewUser},
    connect,
};

pub fn postgres_admin_url() -> String {
    std::env::var("KILN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that lives as long as the value: a fresh Postgres database
/// (dropped afterwards) or a SQLite file in a temporary directory.
pub struct TestDatabase {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn postgres() -> TestDatabase {
        let name = format!("kiln_test_{}", uuid::Uuid::now_v7().simple());
        let admin = postgres_admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("test Postgres at {admin} unreachable: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let (base, _) = admin.rsplit_once('/').expect("admin url has a database");
        TestDatabase {
            url: format!("{base}/{name}"),
            postgres_name: Some(name),
            _dir: None,
        }
    }

    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("kiln.db").display());
        TestDatabase {
            url,
            postgres_name: None,
            _dir: Some(dir),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres_name.is_some()
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Result<Store, StoreError> {
        let store = connect(&ConnectOptions {
            url: self.url.clone(),
            max_connections: 8,
            wait: false,
        })
        .await?;
        store.migrate().await?;
        Ok(store)
    }
}

/// A fresh account with a unique email (generations, images and an
/// owner's jobs belong to one).
pub async fn account(store: &Store) -> uuid::Uuid {
    let n = uuid::Uuid::now_v7().simple().to_string();
    let user = NewUser {
        identifier: Identifier::Email(format!("{n}@example.com")),
        password_hash: "$2b$04$test.account.password.hash.is.never.checked".into(),
        birth_date: chrono::NaiveDate::from_ymd_opt(1990, 12, 10).expect("a valid date"),
        referral_code: n,
        referred_by_code: None,
    };
    store
        .create_user(user)
        .await
        .expect("create a test account")
        .id()
        .expect("a unique email makes a new account")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop is synchronous; do the async clean-up on a thread of its own.
        let admin = postgres_admin_url();
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

/// Runs each named `async fn name(store: Store, db: &TestDatabase)` once on
/// a fresh PostgreSQL database and once on a fresh SQLite file, as the
/// tests `postgres::name` and `sqlite::name`. The calling crate needs
/// `tokio` (macros, multi-threaded runtime) as a dev-dependency.
///
/// ```ignore
/// kiln_store::both_databases!(enqueue_then_get);
///
/// async fn enqueue_then_get(store: Store, _: &TestDatabase) { /* … */ }
/// ```
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::postgres().await;
                    let store = db.store().await.expect("postgres store");
                    super::$name(store, &db).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::sqlite();
                    let store = db.store().await.expect("sqlite store");
                    super::$name(store, &db).await;
                }
            )*
        }
    };
}
