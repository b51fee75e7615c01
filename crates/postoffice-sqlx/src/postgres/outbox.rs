//! The publishing side: [`PgSqlxOutbox`] writes messages in the caller's
//! transaction.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use postoffice_core::{NewMessage, Publish, PublishError, partition_for};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tower_service::Service;

use super::schema::{Names, Queries, max_partition, sql};
use super::{Error, Options};
use crate::limits::{check_partitions, check_stored};

/// The Postgres store for [`Outbox`](postoffice_core::Outbox): a
/// `tower::Service` that writes messages inside a `sqlx::Transaction` or on a
/// `PgConnection`.
///
/// Clones are cheap and share their configuration.
///
/// ```no_run
/// use postoffice_core::{Outbox, PartitionKey};
/// use postoffice_sqlx::PgSqlxOutbox;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Headers { order_id: i64 }
/// impl PartitionKey for Headers {
///     fn partition_key(&self) -> Vec<u8> { self.order_id.to_be_bytes().to_vec() }
/// }
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(PgSqlxOutbox::try_new(pool.clone()).await?);
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
pub struct PgSqlxOutbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    partitions: u32,
    notify: bool,
    channel: String,
    queries: Queries,
}

impl PgSqlxOutbox {
    /// A store with the default options, creating the tables if they are
    /// missing.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the database cannot be reached or refuses to
    /// create the tables.
    pub async fn try_new(pool: PgPool) -> Result<Self, Error> {
        Self::builder(pool).build().await
    }

    /// A builder for a store with other options.
    pub fn builder(pool: PgPool) -> PgSqlxOutboxBuilder {
        PgSqlxOutboxBuilder {
            pool,
            options: Options::default(),
        }
    }

    /// The number of partitions messages are spread over.
    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// Writes `messages` with one statement on `conn`.
    async fn insert(
        &self,
        conn: &mut PgConnection,
        messages: Vec<NewMessage>,
    ) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let count = messages.len();
        let mut partitions = Vec::with_capacity(count);
        let mut keys = Vec::with_capacity(count);
        let mut headers = Vec::with_capacity(count);
        let mut payloads = Vec::with_capacity(count);
        for message in messages {
            let partition = partition_for(&message.partition_key, self.shared.partitions);
            // Partitions are below the count, itself a u32 we chose; this
            // cannot fail for any count Postgres' int4 can hold.
            partitions.push(i32::try_from(partition).unwrap_or(i32::MAX));
            keys.push(message.partition_key);
            headers.push(message.headers);
            payloads.push(message.payload);
        }

        let shared = &self.shared;
        let text = if shared.notify {
            &shared.queries.insert_notify
        } else {
            &shared.queries.insert
        };
        let mut query = sqlx::query(sql(text))
            .bind(partitions)
            .bind(keys)
            .bind(headers)
            .bind(payloads);
        if shared.notify {
            query = query.bind(&shared.channel);
        }
        query
            .execute(conn)
            .await
            .map_err(|e| PublishError::Store(Box::new(Error::Database(e))))?;
        tracing::debug!(count, "messages written to the outbox");
        Ok(())
    }
}

/// Options of a [`PgSqlxOutbox`]; see [`PgSqlxOutbox::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PgSqlxOutboxBuilder {
    pool: PgPool,
    options: Options,
}

impl PgSqlxOutboxBuilder {
    /// The schema holding the tables (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.options.schema = schema.into();
        self
    }

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

    /// Whether publishing sends a `NOTIFY` that wakes the relay at commit
    /// (default `true`). See the [module docs](super#wake-up) for its cost.
    pub fn notify(mut self, notify: bool) -> Self {
        self.options.notify = notify;
        self
    }

    /// Whether `build` creates missing tables (default `true`) or only checks
    /// that they exist.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.options.migrate = migrate;
        self
    }

    /// Checks the names, the partition count and the tables and builds the
    /// store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a bad schema or table name,
    /// [`Error::TooManyPartitions`] for a count above
    /// [`MAX_PARTITIONS`](crate::MAX_PARTITIONS),
    /// [`Error::PartitionMismatch`] when pending messages sit in a partition
    /// not below the count, [`Error::Schema`] when the tables are missing and
    /// creating them is off, [`Error::Database`] when the database fails.
    pub async fn build(self) -> Result<PgSqlxOutbox, Error> {
        let Self { pool, options } = self;
        check_partitions(options.partitions)?;
        let names = Names::new(&options.schema, &options.table)?;
        names.ensure(&pool, options.migrate).await?;
        let queries = Queries::new(&names);
        check_stored(max_partition(&pool, &queries).await?, options.partitions)?;
        let shared = Shared {
            partitions: options.partitions,
            notify: options.notify,
            channel: names.channel(),
            queries,
        };
        Ok(PgSqlxOutbox {
            shared: Arc::new(shared),
        })
    }
}

impl<'t, 'c> Service<Publish<'t, Transaction<'c, Postgres>>> for PgSqlxOutbox {
    type Response = ();
    type Error = PublishError;
    type Future = BoxFuture<'t, Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish<'t, Transaction<'c, Postgres>>) -> Self::Future {
        let this = self.clone();
        let Publish { messages, tx, .. } = request;
        Box::pin(async move { this.insert(tx, messages).await })
    }
}

impl<'t> Service<Publish<'t, PgConnection>> for PgSqlxOutbox {
    type Response = ();
    type Error = PublishError;
    type Future = BoxFuture<'t, Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish<'t, PgConnection>) -> Self::Future {
        let this = self.clone();
        let Publish { messages, tx, .. } = request;
        Box::pin(async move { this.insert(tx, messages).await })
    }
}
