//! The publishing side: [`SqliteSqlxOutbox`] writes messages in the caller's
//! transaction.

use std::fmt::Write as _;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use postoffice_core::{NewMessage, Publish, PublishError, partition_for};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tower_service::Service;

use super::Options;
use super::schema::{Names, Queries, max_partition, sql};
use super::wakeup::{self, Wakeups};
use crate::Error;
use crate::limits::{check_partitions, check_stored};

/// The SQLite store for [`Outbox`](postoffice_core::Outbox): a
/// `tower::Service` that writes messages inside a `sqlx::Transaction` or on a
/// `SqliteConnection`.
///
/// Clones are cheap and share their configuration.
///
/// ```no_run
/// use postoffice_core::{Outbox, PartitionKey};
/// use postoffice_sqlx::SqliteSqlxOutbox;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Headers { order_id: i64 }
/// impl PartitionKey for Headers {
///     fn partition_key(&self) -> Vec<u8> { self.order_id.to_be_bytes().to_vec() }
/// }
///
/// # async fn example(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(SqliteSqlxOutbox::try_new(pool.clone()).await?);
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("insert into orders (id) values (42)").execute(&mut *tx).await?;
/// outbox
///     .publish_messages([(Headers { order_id: 42 }, "order created")], &mut tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteSqlxOutbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    partitions: u32,
    queries: Queries,
    wakeups: Wakeups,
}

impl SqliteSqlxOutbox {
    /// A store with the default options, creating the tables if they are
    /// missing.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the database cannot be reached or refuses to
    /// create the tables.
    pub async fn try_new(pool: SqlitePool) -> Result<Self, Error> {
        Self::builder(pool).build().await
    }

    /// A builder for a store with other options.
    pub fn builder(pool: SqlitePool) -> SqliteSqlxOutboxBuilder {
        SqliteSqlxOutboxBuilder {
            pool,
            options: Options::default(),
        }
    }

    /// The number of partitions messages are spread over.
    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// Writes `messages` with one statement on `conn`, and arms the wake-up
    /// for the commit.
    async fn insert(
        &self,
        conn: &mut SqliteConnection,
        messages: Vec<NewMessage>,
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let count = messages.len();
        let batch = self.batch(messages)?;
        let store_error = |e| PublishError::Store(Box::new(Error::Database(e)));

        // Armed before the insert: on a connection outside a transaction the
        // insert commits by itself.
        wakeup::arm(conn, &self.shared.wakeups)
            .await
            .map_err(store_error)?;
        sqlx::query(sql(&self.shared.queries.insert))
            .bind(batch)
            .execute(conn)
            .await
            .map_err(store_error)?;
        tracing::debug!(count, "messages written to the outbox");
        Ok(())
    }

    /// The batch as the JSON array the insert statement reads:
    /// `[partition, key as hex, headers, payload]` per message.
    fn batch(&self, messages: Vec<NewMessage>) -> Result<String, PublishError> {
        let rows: Vec<(u32, String, String, String)> = messages
            .into_iter()
            .map(|message| {
                let partition = partition_for(&message.partition_key, self.shared.partitions);
                (
                    partition,
                    hex(&message.partition_key),
                    message.headers,
                    message.payload,
                )
            })
            .collect();
        serde_json::to_string(&rows).map_err(|e| PublishError::Store(Box::new(e)))
    }
}

/// Lowercase hex of `bytes`, as SQLite's `unhex` reads it.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Options of a [`SqliteSqlxOutbox`]; see [`SqliteSqlxOutbox::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct SqliteSqlxOutboxBuilder {
    pool: SqlitePool,
    options: Options,
}

impl SqliteSqlxOutboxBuilder {
    /// The outbox table (default `postoffice_outbox`); the dead-letter table
    /// is this name with `_dead` appended.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.options.table = table.into();
        self
    }

    /// The number of partitions (default
    /// [`DEFAULT_PARTITIONS`](postoffice_core::DEFAULT_PARTITIONS), at least
    /// 1, at most [`MAX_PARTITIONS`](crate::MAX_PARTITIONS)). Pollers must
    /// use the same number, and it must not change while messages are
    /// pending; see the [module docs](super#partitions).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.options.partitions = partitions.max(1);
        self
    }

    /// Whether `build` creates missing tables (default `true`) or only checks
    /// that they exist.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.options.migrate = migrate;
        self
    }

    /// Checks the name, the partition count and the tables and builds the
    /// store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a bad table name,
    /// [`Error::TooManyPartitions`] for a count above
    /// [`MAX_PARTITIONS`](crate::MAX_PARTITIONS),
    /// [`Error::PartitionMismatch`] when pending messages sit in a partition
    /// not below the count, [`Error::Schema`] when the tables are missing and
    /// creating them is off, [`Error::Database`] when the database fails.
    pub async fn build(self) -> Result<SqliteSqlxOutbox, Error> {
        let Self { pool, options } = self;
        check_partitions(options.partitions)?;
        let names = Names::new(&options.table)?;
        names.ensure(&pool, options.migrate).await?;
        let queries = Queries::new(&names);
        check_stored(max_partition(&pool, &queries).await?, options.partitions)?;
        let shared = Shared {
            partitions: options.partitions,
            queries,
            wakeups: wakeup::for_table(&pool, names.table()),
        };
        Ok(SqliteSqlxOutbox {
            shared: Arc::new(shared),
        })
    }
}

impl<'t, 'c> Service<Publish<'t, Transaction<'c, Sqlite>>> for SqliteSqlxOutbox {
    type Response = ();
    type Error = PublishError;
    type Future = BoxFuture<'t, Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish<'t, Transaction<'c, Sqlite>>) -> Self::Future {
        let this = self.clone();
        let Publish { messages, tx, .. } = request;
        Box::pin(async move { this.insert(tx, messages).await })
    }
}

impl<'t> Service<Publish<'t, SqliteConnection>> for SqliteSqlxOutbox {
    type Response = ();
    type Error = PublishError;
    type Future = BoxFuture<'t, Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish<'t, SqliteConnection>) -> Self::Future {
        let this = self.clone();
        let Publish { messages, tx, .. } = request;
        Box::pin(async move { this.insert(tx, messages).await })
    }
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex(&[]), "");
    }
}
