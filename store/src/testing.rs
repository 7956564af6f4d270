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

/// The personal-data keys of tests, as hex: every test store seals under
/// them, and the `kiln` processes tests start are given them
/// (`KILN_ENCRYPTION_KEYS`, `KILN_ENCRYPTION_INDEX_KEY`), so a test and the
/// processes it starts read each other's accounts, as the processes of one
/// deployment share theirs.
pub const TEST_PII_KEY: &str = "6b696c6e2d746573742d7069692d6b65792d6f662d33322d62797465732d2121";
pub const TEST_INDEX_KEY: &str = "6b696c6e2d746573742d696e6465782d6b65792d33322d62797465732d212121";

/// The keys of [`TEST_PII_KEY`] and [`TEST_INDEX_KEY`], the key's id `k1`.
pub fn test_pii() -> std::sync::Arc<crate::Pii> {
    let key = hex::decode(TEST_PII_KEY).expect("hex");
    let index = hex::decode(TEST_INDEX_KEY).expect("hex");
    let keys = std::collections::BTreeMap::from([("k1".to_owned(), key)]);
    std::sync::Arc::new(crate::Pii::new(&index, "k1", &keys).expect("valid test keys"))
}

/// A database that lives as long as the value: a fresh Postgres database
/// (dropped afterwards) or a SQLite file in a temporary directory.
pub struct TestDatabase {
    pub url: String,
    /// The server's admin URL and the database's name, to drop it.
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh database on the test server ([`postgres_admin_url`]);
    /// panics when it cannot be created.
    pub async fn postgres() -> TestDatabase {
        let admin = postgres_admin_url();
        TestDatabase::postgres_at(&admin)
            .await
            .unwrap_or_else(|e| panic!("test Postgres at {admin}: {e}"))
    }

    /// A fresh database on the server of `admin`, a URL ending in
    /// `/<database>` (and maybe `?<parameters>`, kept) that may create
    /// databases.
    pub async fn postgres_at(admin: &str) -> Result<TestDatabase, sqlx::Error> {
        let (path, query) = admin.split_once('?').map_or((admin, ""), |(p, q)| (p, q));
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let (base, _) = path
            .rsplit_once('/')
            .ok_or_else(|| sqlx::Error::Configuration("the URL must end in /<database>".into()))?;
        let name = format!("kiln_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(TestDatabase {
            url: format!("{base}/{name}{query}"),
            postgres: Some((admin.to_owned(), name)),
            _dir: None,
        })
    }

    /// A SQLite file in a fresh temporary directory; panics without one.
    pub fn sqlite() -> TestDatabase {
        TestDatabase::try_sqlite().expect("temp dir")
    }

    pub fn try_sqlite() -> std::io::Result<TestDatabase> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite:{}", dir.path().join("kiln.db").display());
        Ok(TestDatabase {
            url,
            postgres: None,
            _dir: Some(dir),
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Result<Store, StoreError> {
        let store = connect(&ConnectOptions {
            url: self.url.clone(),
            direct_url: None,
            pooler: Default::default(),
            max_connections: 8,
            wait: false,
            // As `kiln serve` runs by default.
            session_cache: std::time::Duration::from_secs(60),
            pii: test_pii(),
        })
        .await?;
        store.migrate().await?;
        Ok(store)
    }
}

/// A fresh account with a unique email (generations, images and an
/// owner's jobs belong to one).
pub async fn account(store: &Store) -> kiln_jobs::UserId {
    let n = uuid::Uuid::now_v7().simple().to_string();
    let user = NewUser {
        identifier: Identifier::Email(format!("{n}@example.com")),
        password_hash: "$2b$04$test.account.password.hash.is.never.checked".into(),
        birth_date: chrono::NaiveDate::from_ymd_opt(1990, 12, 10).expect("a valid date"),
        referral_code: n,
        referred_by_code: None,
        locale: Default::default(),
    };
    store
        .create_user(user)
        .await
        .expect("create a test account")
        .id()
        .expect("a unique email makes a new account")
}

/// An account that proved its address (notices go only to such), reached
/// at `identifier`, its notices in `locale`.
pub async fn verified_account(
    store: &Store,
    identifier: Identifier,
    locale: kiln_jobs::Locale,
) -> kiln_jobs::UserId {
    let n = uuid::Uuid::now_v7().simple().to_string();
    let user = store
        .create_user(NewUser {
            identifier,
            password_hash: "$2b$04$test.account.password.hash.is.never.checked".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1990, 12, 10).expect("a valid date"),
            referral_code: n,
            referred_by_code: None,
            locale,
        })
        .await
        .expect("create a test account")
        .id()
        .expect("a unique address makes a new account");
    store
        .issue_code(crate::accounts::NewCode {
            id: uuid::Uuid::now_v7(),
            user_id: user,
            code_hash: "test-code".into(),
            expires_at: chrono::Utc::now() + chrono::TimeDelta::hours(1),
            contact: None,
        })
        .await
        .expect("issue a code");
    let check = store
        .check_code(user, "test-code", Default::default())
        .await
        .expect("check the code");
    assert_eq!(check, crate::accounts::CodeCheck::Verified);
    user
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop is synchronous; do the async clean-up on a thread of its own.
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
