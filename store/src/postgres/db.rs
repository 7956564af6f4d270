//! The pool the engine's statements go through: Postgres itself, or a
//! transaction pooler in front of it (PgBouncer with `pool_mode =
//! transaction`).
//!
//! A transaction pooler lends a server connection for one transaction and
//! takes it back at the next `ReadyForQuery` outside one. sqlx sends every
//! statement with arguments as Parse/Describe/Sync, then Bind/Execute/Sync,
//! and names it (`sqlx_s_<n>`, counted per client connection) even with
//! its statement cache off (0.9.0). Through such a pooler, outside a
//! transaction the Bind can reach another server than the Parse ("prepared
//! statement does not exist"), and a name left behind on a server clashes
//! with the same name from another client ("already exists"). So behind one
//! every statement runs in a transaction, which holds its server until the
//! end, and every transaction starts by dropping the statements earlier
//! clients left on that server; the statement cache is off, so none is
//! reused across transactions.

use futures::{StreamExt, TryStreamExt, future::BoxFuture, stream::BoxStream};
use sqlx::{
    Either, Execute, Executor, PgConnection, PgPool, Postgres, Transaction,
    pool::PoolConnection,
    postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo},
};

/// How a transaction starts behind a transaction pooler (see the module).
const POOLED_BEGIN: &str = "BEGIN; DEALLOCATE ALL";

/// The engine's pool of connections and how they reach Postgres.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    /// Behind a transaction pooler: each statement in a transaction of its
    /// own, each transaction begun with [`POOLED_BEGIN`].
    pooled: bool,
}

impl Db {
    pub fn new(pool: PgPool, pooled: bool) -> Db {
        Db { pool, pooled }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        if self.pooled {
            self.pool.begin_with(POOLED_BEGIN).await
        } else {
            self.pool.begin().await
        }
    }

    /// A connection for a few statements that need no transaction of their
    /// own; behind a transaction pooler they get one anyway, committed by
    /// [`Conn::done`].
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        Ok(if self.pooled {
            Conn::Pooled(self.begin().await?)
        } else {
            Conn::Direct(self.pool.acquire().await?)
        })
    }
}

/// See [`Db::acquire`].
pub enum Conn {
    Direct(PoolConnection<Postgres>),
    Pooled(Transaction<'static, Postgres>),
}

impl Conn {
    /// Commits what a pooled connection did (dropped instead, it rolls back).
    pub async fn done(self) -> Result<(), sqlx::Error> {
        match self {
            Conn::Direct(_) => Ok(()),
            Conn::Pooled(tx) => tx.commit().await,
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Conn::Direct(c) => c,
            Conn::Pooled(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Conn::Direct(c) => c,
            Conn::Pooled(tx) => tx,
        }
    }
}

/// `&db` runs a statement as `&pool` does, or behind a transaction pooler
/// in a transaction of its own (its rows are collected before the commit).
impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_many(query);
        }
        let db = self.clone();
        futures::stream::once(async move {
            let mut tx = db.begin().await?;
            let results: Vec<_> = tx.fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures::stream::iter(results.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_optional(query);
        }
        let db = self.clone();
        Box::pin(async move {
            let mut tx = db.begin().await?;
            let row = tx.fetch_optional(query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}
