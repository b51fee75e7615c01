//! A Postgres schema of its own per scenario, with an outbox in it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use postoffice_core::Outbox;
use postoffice_sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller, PgSqlxOutboxPollerBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use crate::{Committed, Headers, Payload, random_name};

/// `DATABASE_URL`, or the local test server.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Connect options for `DATABASE_URL` with an `application_name`, so that a
/// scenario can find its own sessions in `pg_stat_activity`.
///
/// # Errors
///
/// When `DATABASE_URL` does not parse.
pub fn connect_options(application_name: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(&database_url()).context("DATABASE_URL")?;
    Ok(options.application_name(application_name))
}

/// A pool of up to `size` connections named `application_name`.
///
/// # Errors
///
/// When Postgres cannot be reached.
pub async fn pool(application_name: &str, size: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(size)
        .connect_with(connect_options(application_name)?)
        .await
        .context("connect to Postgres (set DATABASE_URL)")
}

/// A schema named `po_<random>` holding an outbox table, dropped by
/// [`Db::close`].
#[derive(Debug)]
pub struct Db {
    /// The pool the test publishes and inspects through.
    pub pool: PgPool,
    /// The schema's name.
    pub schema: String,
}

impl Db {
    /// Creates the schema and the outbox tables in it.
    ///
    /// # Errors
    ///
    /// When Postgres cannot be reached or refuses the statements.
    pub async fn create() -> anyhow::Result<Self> {
        let schema = random_name("po");
        let pool = pool(&format!("{schema}-test"), 8).await?;
        sqlx::raw_sql(AssertSqlSafe(format!("create schema {schema}")))
            .execute(&pool)
            .await
            .context("create schema")?;
        let db = Self { pool, schema };
        db.outbox().await?;
        Ok(db)
    }

    /// A handle on a schema created by [`Db::create`], sharing its pool (for
    /// a task that publishes while the test goes on).
    pub fn attach(pool: PgPool, schema: String) -> Self {
        Self { pool, schema }
    }

    /// The store, on the test's pool.
    ///
    /// # Errors
    ///
    /// When the tables cannot be created or checked.
    pub async fn outbox(&self) -> anyhow::Result<PgSqlxOutbox> {
        PgSqlxOutbox::builder(self.pool.clone())
            .schema(&self.schema)
            .build()
            .await
            .context("outbox store")
    }

    /// A poller builder for the schema on `pool`, polling every 200 ms.
    pub fn poller(&self, pool: PgPool) -> PgSqlxOutboxPollerBuilder<Headers, Payload> {
        PgSqlxOutboxPoller::builder(pool)
            .schema(&self.schema)
            .poll_interval(Duration::from_millis(200))
    }

    /// Publishes `batch` in transactions of `per_tx` messages, one after the
    /// other, and returns what committed.
    ///
    /// # Errors
    ///
    /// When a publish or commit fails; what committed before is lost to the
    /// caller then, so tests treat it as fatal.
    pub async fn publish(
        &self,
        batch: &[(Headers, Payload)],
        per_tx: usize,
    ) -> anyhow::Result<Committed> {
        let outbox = Outbox::new(self.outbox().await?);
        let mut committed = Committed::default();
        for chunk in batch.chunks(per_tx.max(1)) {
            let mut tx = self.pool.begin().await?;
            outbox
                .publish_messages(chunk.iter().cloned(), &mut tx)
                .await?;
            tx.commit().await?;
            committed.add_all(chunk);
        }
        Ok(committed)
    }

    /// `schema.postoffice_outbox`.
    pub fn table(&self) -> String {
        format!("{}.postoffice_outbox", self.schema)
    }

    /// Rows left in the outbox table.
    ///
    /// # Errors
    ///
    /// When the query fails.
    pub async fn rows(&self) -> anyhow::Result<i64> {
        let sql = format!("select count(*) from {}", self.table());
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    /// `(key, seq)` of the rows left in the outbox table.
    ///
    /// # Errors
    ///
    /// When the query fails.
    pub async fn pending(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let sql = format!(
            "select payload->>'key', (payload->>'seq')::int8 from {} order by id",
            self.table()
        );
        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, seq)| (key, u32::try_from(seq).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Rows in the dead-letter table.
    ///
    /// # Errors
    ///
    /// When the query fails.
    pub async fn dead_rows(&self) -> anyhow::Result<i64> {
        let sql = format!("select count(*) from {}_dead", self.table());
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Ends every session named `application_name` (the pool of a relay),
    /// returning how many were ended.
    ///
    /// # Errors
    ///
    /// When the query fails.
    pub async fn terminate(&self, application_name: &str) -> anyhow::Result<i64> {
        let sql = "select count(*) filter (where pg_terminate_backend(pid)) \
                   from pg_stat_activity where application_name = $1 and pid <> pg_backend_pid()";
        Ok(sqlx::query_scalar(sql)
            .bind(application_name)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Drops the schema and closes the pool.
    pub async fn close(self) {
        let drop = format!("drop schema if exists {} cascade", self.schema);
        let _ = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&self.pool).await;
        self.pool.close().await;
    }
}
