//! The harnesses of the bundled stores: in memory, SQLite and Postgres.

use std::str::FromStr;
use std::time::Duration;

use postoffice_core::memory::{InMemoryOutbox, InMemoryPoller, InMemoryTransaction};
use postoffice_core::{DeadLetterEntry, MessageId, Outbox, PublishError};
use postoffice_sqlx::{
    DeletionMode, PgSqlxOutbox, PgSqlxOutboxPoller, SqliteSqlxOutbox, SqliteSqlxOutboxPoller,
};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::{Capabilities, Harness, Headers, Payload, PollerOptions, StoreOptions, Unsupported};

/// The most dead letters a harness lists.
const DEAD_LIMIT: usize = 10_000;

/// The in-memory store of `postoffice-core`.
#[derive(Debug)]
pub struct MemoryHarness {
    store: InMemoryOutbox,
}

impl Harness for MemoryHarness {
    type Tx = InMemoryTransaction;
    type Poller = InMemoryPoller<Headers, Payload>;

    async fn new(options: StoreOptions) -> Self {
        Self {
            store: InMemoryOutbox::with_options(options.partitions, options.policy),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logical_deletion: false,
            concurrent_writers: true,
        }
    }

    async fn begin(&self) -> Self::Tx {
        self.store.begin()
    }

    async fn publish(
        &self,
        tx: &mut Self::Tx,
        batch: Vec<(Headers, Payload)>,
    ) -> Result<(), PublishError> {
        Outbox::new(self.store.clone())
            .publish_messages(batch, tx)
            .await
    }

    async fn commit(&self, tx: Self::Tx) {
        tx.commit();
    }

    async fn rollback(&self, tx: Self::Tx) {
        tx.rollback();
    }

    async fn poller(&self, options: PollerOptions) -> Result<Self::Poller, Unsupported> {
        if options.deletion != DeletionMode::Physical {
            return Err(Unsupported(
                "the in-memory store deletes delivered messages",
            ));
        }
        let owned = options
            .owned
            .unwrap_or_else(|| (0..self.store.partitions()).collect());
        Ok(self
            .store
            .poller_for(owned)
            .poll_interval(options.poll_interval))
    }

    async fn pending(&self) -> usize {
        self.store.pending()
    }

    async fn stored(&self) -> usize {
        self.store.pending()
    }

    async fn purge_delivered(&self) -> Result<u64, Unsupported> {
        Err(Unsupported(
            "the in-memory store keeps no delivered messages",
        ))
    }

    async fn dead_letters(&self) -> Vec<DeadLetterEntry> {
        self.store.dead_letters()
    }

    async fn replay(&self, ids: &[MessageId]) -> u64 {
        self.store.replay(ids) as u64
    }

    async fn purge_dead(&self, ids: &[MessageId]) -> u64 {
        self.store.purge(ids) as u64
    }

    async fn insert_raw(&self, key: &[u8], headers: &str, payload: &str) {
        self.store.insert_raw(key, headers, payload);
    }

    async fn cleanup(self) {}
}

/// The SQLite store, on a database file of its own in a temporary directory.
#[derive(Debug)]
pub struct SqliteHarness {
    pool: SqlitePool,
    outbox: Outbox<SqliteSqlxOutbox>,
    options: StoreOptions,
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    async fn admin(&self) -> SqliteSqlxOutboxPoller<Headers, Payload> {
        self.sqlite_poller(PollerOptions::default())
            .await
            .expect("admin poller")
    }

    async fn sqlite_poller(
        &self,
        options: PollerOptions,
    ) -> Result<SqliteSqlxOutboxPoller<Headers, Payload>, postoffice_sqlx::Error> {
        let mut builder = SqliteSqlxOutboxPoller::builder(self.pool.clone())
            .partitions(self.options.partitions)
            .dead_letter_policy(self.options.policy)
            .deletion(options.deletion)
            .poll_interval(options.poll_interval);
        if let Some(owned) = options.owned {
            builder = builder.owned_partitions(owned);
        }
        builder.build().await
    }

    async fn count(&self, sql: &str) -> usize {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count");
        usize::try_from(n).expect("count")
    }
}

impl Harness for SqliteHarness {
    type Tx = Transaction<'static, Sqlite>;
    type Poller = SqliteSqlxOutboxPoller<Headers, Payload>;

    async fn new(options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let connect = SqliteConnectOptions::new()
            .filename(dir.path().join("outbox.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(connect)
            .await
            .expect("open SQLite");
        let store = SqliteSqlxOutbox::builder(pool.clone())
            .partitions(options.partitions)
            .build()
            .await
            .expect("SQLite store");
        Self {
            pool,
            outbox: Outbox::new(store),
            options,
            dir,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logical_deletion: true,
            concurrent_writers: false,
        }
    }

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.expect("begin")
    }

    async fn publish(
        &self,
        tx: &mut Self::Tx,
        batch: Vec<(Headers, Payload)>,
    ) -> Result<(), PublishError> {
        self.outbox.publish_messages(batch, tx).await
    }

    async fn commit(&self, tx: Self::Tx) {
        tx.commit().await.expect("commit");
    }

    async fn rollback(&self, tx: Self::Tx) {
        tx.rollback().await.expect("rollback");
    }

    async fn poller(&self, options: PollerOptions) -> Result<Self::Poller, Unsupported> {
        Ok(self.sqlite_poller(options).await.expect("SQLite poller"))
    }

    async fn pending(&self) -> usize {
        self.count("select count(*) from postoffice_outbox where delivered_at is null")
            .await
    }

    async fn stored(&self) -> usize {
        self.count("select count(*) from postoffice_outbox").await
    }

    async fn purge_delivered(&self) -> Result<u64, Unsupported> {
        Ok(self
            .admin()
            .await
            .purge_delivered(Duration::ZERO, 1000)
            .await
            .expect("purge"))
    }

    async fn dead_letters(&self) -> Vec<DeadLetterEntry> {
        self.admin()
            .await
            .dead_letters(DEAD_LIMIT)
            .await
            .expect("dead letters")
    }

    async fn replay(&self, ids: &[MessageId]) -> u64 {
        self.admin().await.replay(ids).await.expect("replay")
    }

    async fn purge_dead(&self, ids: &[MessageId]) -> u64 {
        self.admin().await.purge(ids).await.expect("purge")
    }

    async fn insert_raw(&self, key: &[u8], headers: &str, payload: &str) {
        let partition = postoffice_core::partition_for(key, self.options.partitions);
        sqlx::query(
            "insert into postoffice_outbox (partition, partition_key, headers, payload) \
             values (?1, ?2, ?3, ?4)",
        )
        .bind(i64::from(partition))
        .bind(key)
        .bind(headers)
        .bind(payload)
        .execute(&self.pool)
        .await
        .expect("raw insert");
    }

    async fn cleanup(self) {
        self.pool.close().await;
        drop(self.dir);
    }
}

/// The Postgres store, in a schema of its own with a random name, on the
/// server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
#[derive(Debug)]
pub struct PostgresHarness {
    pool: PgPool,
    schema: String,
    outbox: Outbox<PgSqlxOutbox>,
    options: StoreOptions,
}

/// The Postgres server the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

impl PostgresHarness {
    async fn admin(&self) -> PgSqlxOutboxPoller<Headers, Payload> {
        self.pg_poller(PollerOptions::default(), false)
            .await
            .expect("admin poller")
    }

    async fn pg_poller(
        &self,
        options: PollerOptions,
        notify: bool,
    ) -> Result<PgSqlxOutboxPoller<Headers, Payload>, postoffice_sqlx::Error> {
        let mut builder = PgSqlxOutboxPoller::builder(self.pool.clone())
            .schema(&self.schema)
            .partitions(self.options.partitions)
            .notify(notify)
            .dead_letter_policy(self.options.policy)
            .deletion(options.deletion)
            .poll_interval(options.poll_interval);
        if let Some(owned) = options.owned {
            builder = builder.owned_partitions(owned);
        }
        builder.build().await
    }

    async fn count(&self, filter: &str) -> usize {
        let sql = format!(
            "select count(*) from {}.postoffice_outbox {filter}",
            self.schema
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .expect("count");
        usize::try_from(n).expect("count")
    }
}

impl Harness for PostgresHarness {
    type Tx = Transaction<'static, Postgres>;
    type Poller = PgSqlxOutboxPoller<Headers, Payload>;

    async fn new(options: StoreOptions) -> Self {
        let connect = PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(connect)
            .await
            .expect("connect to Postgres (set DATABASE_URL)");
        let schema = format!("po_{:016x}", rand::rng().random::<u64>());
        let store = PgSqlxOutbox::builder(pool.clone())
            .schema(&schema)
            .partitions(options.partitions)
            .build()
            .await
            .expect("Postgres store");
        Self {
            pool,
            schema,
            outbox: Outbox::new(store),
            options,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            logical_deletion: true,
            concurrent_writers: true,
        }
    }

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.expect("begin")
    }

    async fn publish(
        &self,
        tx: &mut Self::Tx,
        batch: Vec<(Headers, Payload)>,
    ) -> Result<(), PublishError> {
        self.outbox.publish_messages(batch, tx).await
    }

    async fn commit(&self, tx: Self::Tx) {
        tx.commit().await.expect("commit");
    }

    async fn rollback(&self, tx: Self::Tx) {
        tx.rollback().await.expect("rollback");
    }

    async fn poller(&self, options: PollerOptions) -> Result<Self::Poller, Unsupported> {
        Ok(self
            .pg_poller(options, true)
            .await
            .expect("Postgres poller"))
    }

    async fn pending(&self) -> usize {
        self.count("where delivered_at is null").await
    }

    async fn stored(&self) -> usize {
        self.count("").await
    }

    async fn purge_delivered(&self) -> Result<u64, Unsupported> {
        Ok(self
            .admin()
            .await
            .purge_delivered(Duration::ZERO, 1000)
            .await
            .expect("purge"))
    }

    async fn dead_letters(&self) -> Vec<DeadLetterEntry> {
        self.admin()
            .await
            .dead_letters(DEAD_LIMIT)
            .await
            .expect("dead letters")
    }

    async fn replay(&self, ids: &[MessageId]) -> u64 {
        self.admin().await.replay(ids).await.expect("replay")
    }

    async fn purge_dead(&self, ids: &[MessageId]) -> u64 {
        self.admin().await.purge(ids).await.expect("purge")
    }

    async fn insert_raw(&self, key: &[u8], headers: &str, payload: &str) {
        let partition = postoffice_core::partition_for(key, self.options.partitions);
        let sql = format!(
            "insert into {}.postoffice_outbox (partition, partition_key, headers, payload) \
             values ($1, $2, $3::jsonb, $4::jsonb)",
            self.schema
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(i32::try_from(partition).expect("partition"))
            .bind(key)
            .bind(headers)
            .bind(payload)
            .execute(&self.pool)
            .await
            .expect("raw insert");
    }

    async fn cleanup(self) {
        let drop = format!("drop schema if exists {} cascade", self.schema);
        let _ = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&self.pool).await;
        self.pool.close().await;
    }
}
