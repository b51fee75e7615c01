//! The relay side: [`PgSqlxOutboxPoller`] reads committed messages for a
//! [`Producer`](postoffice_core::Producer) and removes confirmed ones.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use postoffice_core::poller::{Complete, DeadLetter, Fail, Fetch, WaitForWork};
use postoffice_core::{
    BoxError, DeadLetterEntry, DeadLetterPolicy, DecodeError, Message, MessageId, error_chain,
};
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use tokio_util::sync::DropGuard;
use tower_service::Service;

use super::dead_letters::DeadQueries;
use super::schema::{Names, Queries, sql};
use super::{DeletionMode, Error, Options, listener};

/// Poll interval used unless configured otherwise.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The relay side of a Postgres outbox, for headers `H` and payload `P`: give
/// it to a [`Producer`](postoffice_core::Producer).
///
/// It answers every [poller request](postoffice_core::poller): it reads
/// committed messages of the partitions it owns in id order, deletes (or marks,
/// in [logical mode](DeletionMode::Logical)) only the ones the producer
/// confirmed, and sets aside rows that no longer decode into `(H, P)`, with
/// the decoding error, in the dead-letter table.
///
/// With notify on, a background task listens for publishes and ends when the
/// last clone of the poller is dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use postoffice_core::{Producer, Transport, CancellationToken, transport::InMemory};
/// use postoffice_sqlx::PgSqlxOutboxPoller;
///
/// #[derive(Clone, serde::Deserialize)]
/// struct Headers { order_id: i64 }
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let poller =
///     PgSqlxOutboxPoller::<Headers, String>::try_new(pool, Duration::from_secs(1)).await?;
/// let producer = Producer::new(poller, Transport::new(InMemory::default()));
/// producer.run(CancellationToken::new()).await?;
/// # Ok(())
/// # }
/// ```
pub struct PgSqlxOutboxPoller<H, P> {
    shared: Arc<Shared>,
    /// The wake-up count this poller (and its clones) saw last.
    seen: Arc<AtomicU64>,
    _types: PhantomData<fn() -> (H, P)>,
}

struct Shared {
    pool: PgPool,
    queries: Queries,
    partitions: u32,
    owned: Vec<u32>,
    poll_interval: Duration,
    deletion: DeletionMode,
    policy: DeadLetterPolicy,
    dead: DeadQueries,
    wakeups: Arc<watch::Sender<u64>>,
    /// Stops the listener task when the last clone drops.
    _listener: Option<DropGuard>,
}

impl<H, P> Clone for PgSqlxOutboxPoller<H, P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            seen: Arc::clone(&self.seen),
            _types: PhantomData,
        }
    }
}

impl<H, P> fmt::Debug for PgSqlxOutboxPoller<H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSqlxOutboxPoller")
            .field("partitions", &self.shared.partitions)
            .field("owned", &self.shared.owned)
            .field("poll_interval", &self.shared.poll_interval)
            .field("deletion", &self.shared.deletion)
            .field("dead_letter_policy", &self.shared.policy)
            .field("notify", &self.shared._listener.is_some())
            .finish()
    }
}

impl<H, P> PgSqlxOutboxPoller<H, P> {
    /// A poller with the default options that owns every partition and polls
    /// at least every `poll_interval`, creating the tables if they are missing.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the database cannot be reached, refuses to
    /// create the tables, or refuses `LISTEN`.
    pub async fn try_new(pool: PgPool, poll_interval: Duration) -> Result<Self, Error> {
        Self::builder(pool)
            .poll_interval(poll_interval)
            .build()
            .await
    }

    /// A builder for a poller with other options.
    pub fn builder(pool: PgPool) -> PgSqlxOutboxPollerBuilder<H, P> {
        PgSqlxOutboxPollerBuilder {
            pool,
            options: Options::default(),
            owned: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            deletion: DeletionMode::default(),
            policy: DeadLetterPolicy::default(),
            _types: PhantomData,
        }
    }

    /// The partitions this poller serves, ascending.
    pub fn owned_partitions(&self) -> &[u32] {
        &self.shared.owned
    }

    /// The deletion mode.
    pub fn deletion(&self) -> DeletionMode {
        self.shared.deletion
    }

    /// The dead-letter policy.
    pub fn dead_letter_policy(&self) -> DeadLetterPolicy {
        self.shared.policy
    }

    /// The messages set aside, by id, at most `limit` of them; of every
    /// partition, not only the owned ones.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterEntry>, Error> {
        self.shared.dead.list(&self.shared.pool, limit).await
    }

    /// Puts set-aside messages back in the outbox under their original ids,
    /// in one statement, so each goes out before the later messages of its
    /// partition that are still pending. Their attempt counts start again
    /// from zero. Returns how many were replayed; unknown ids are ignored.
    /// Wakes this poller; other pollers see the messages at their next poll.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the statement fails; then nothing is replayed.
    pub async fn replay(&self, ids: &[MessageId]) -> Result<u64, Error> {
        let replayed = self.shared.dead.replay(&self.shared.pool, ids).await?;
        tracing::debug!(replayed, "dead letters replayed");
        listener::bump(&self.shared.wakeups);
        Ok(replayed)
    }

    /// Drops set-aside messages for good. Returns how many were dropped.
    /// Wakes this poller, since with [`DeadLetterPolicy::Block`] a purge can
    /// free a partition.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the statement fails.
    pub async fn purge(&self, ids: &[MessageId]) -> Result<u64, Error> {
        let purged = self.shared.dead.purge(&self.shared.pool, ids).await?;
        listener::bump(&self.shared.wakeups);
        Ok(purged)
    }

    /// Deletes rows delivered more than `older_than` ago (logical-deletion
    /// mode), at most `batch` rows per statement, until none is left, and
    /// returns how many it deleted.
    ///
    /// Each batch is its own short statement, so the purge never holds many
    /// locks for long and can run while the relay works. Rows of every
    /// partition are purged, not only the owned ones. In physical mode there
    /// is nothing to purge.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a batch fails; earlier batches stay deleted.
    pub async fn purge_delivered(&self, older_than: Duration, batch: usize) -> Result<u64, Error> {
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sql(&self.shared.queries.purge))
                .bind(older_than.as_secs_f64())
                .bind(batch)
                .execute(&self.shared.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < batch.unsigned_abs() {
                tracing::debug!(deleted = total, "delivered messages purged");
                return Ok(total);
            }
        }
    }
}

/// Options of a [`PgSqlxOutboxPoller`]; see [`PgSqlxOutboxPoller::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PgSqlxOutboxPollerBuilder<H, P> {
    pool: PgPool,
    options: Options,
    owned: Option<Vec<u32>>,
    poll_interval: Duration,
    deletion: DeletionMode,
    policy: DeadLetterPolicy,
    _types: PhantomData<fn() -> (H, P)>,
}

impl<H, P> fmt::Debug for PgSqlxOutboxPollerBuilder<H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSqlxOutboxPollerBuilder")
            .field("options", &self.options)
            .field("owned", &self.owned)
            .field("poll_interval", &self.poll_interval)
            .field("deletion", &self.deletion)
            .field("dead_letter_policy", &self.policy)
            .finish()
    }
}

impl<H, P> PgSqlxOutboxPollerBuilder<H, P> {
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
    /// 1); must match the publishing store's.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.options.partitions = partitions.max(1);
        self
    }

    /// The partitions this poller serves (default: all). Pollers in one
    /// process must own disjoint sets, so that each partition has one sender.
    pub fn owned_partitions(mut self, partitions: impl IntoIterator<Item = u32>) -> Self {
        self.owned = Some(partitions.into_iter().collect());
        self
    }

    /// Whether to listen for the publishers' `NOTIFY` (default `true`).
    /// Without it, new messages are found by polling only.
    pub fn notify(mut self, notify: bool) -> Self {
        self.options.notify = notify;
        self
    }

    /// The longest wait between polls (default 1 s). With notify on this is
    /// the fallback when a notification is lost.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// What happens to confirmed messages (default
    /// [`DeletionMode::Physical`]).
    pub fn deletion(mut self, deletion: DeletionMode) -> Self {
        self.deletion = deletion;
        self
    }

    /// What a partition does after one of its messages was set aside (default
    /// [`DeadLetterPolicy::MoveOn`]). With [`DeadLetterPolicy::Block`] the
    /// poller skips every partition that has a dead letter until it is
    /// [replayed](PgSqlxOutboxPoller::replay) or
    /// [purged](PgSqlxOutboxPoller::purge); that costs one more query per
    /// fetch.
    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Whether `build` creates missing tables (default `true`) or only checks
    /// that they exist.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.options.migrate = migrate;
        self
    }

    /// Checks the names, partitions and tables, starts the listener (with
    /// notify on) and builds the poller. Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a bad schema or table name,
    /// [`Error::PartitionOutOfRange`] for an owned partition not below the
    /// partition count, [`Error::Schema`] when the tables are missing and
    /// creating them is off, [`Error::Database`] when the database fails.
    pub async fn build(self) -> Result<PgSqlxOutboxPoller<H, P>, Error> {
        let Self {
            pool,
            options,
            owned,
            poll_interval,
            deletion,
            policy,
            ..
        } = self;
        let partitions = options.partitions;
        let mut owned = owned.unwrap_or_else(|| (0..partitions).collect());
        owned.sort_unstable();
        owned.dedup();
        if let Some(&partition) = owned.iter().find(|p| **p >= partitions) {
            return Err(Error::PartitionOutOfRange {
                partition,
                partitions,
            });
        }

        let names = Names::new(&options.schema, &options.table)?;
        names.ensure(&pool, options.migrate).await?;

        let wakeups = Arc::new(watch::Sender::new(0));
        let listener = if options.notify {
            Some(listener::spawn(&pool, names.channel(), Arc::clone(&wakeups)).await?)
        } else {
            None
        };
        let shared = Shared {
            pool,
            queries: Queries::new(&names),
            dead: DeadQueries::new(&names),
            policy,
            partitions,
            owned,
            poll_interval,
            deletion,
            wakeups,
            _listener: listener,
        };
        Ok(PgSqlxOutboxPoller {
            shared: Arc::new(shared),
            seen: Arc::new(AtomicU64::new(0)),
            _types: PhantomData,
        })
    }
}

/// Converts a row's integer to the unsigned type the message model uses;
/// the schema keeps these columns non-negative.
fn unsigned(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// Decodes one fetched row, or says why it does not decode.
fn decode<H: DeserializeOwned, P: DeserializeOwned>(
    row: &PgRow,
) -> Result<Result<Message<H, P>, DecodeError>, sqlx::Error> {
    let id = MessageId::new(row.try_get(0)?);
    let headers: String = row.try_get(3)?;
    let payload: String = row.try_get(4)?;
    let headers = match serde_json::from_str(&headers) {
        Ok(headers) => headers,
        Err(source) => return Ok(Err(DecodeError { id, source })),
    };
    let payload = match serde_json::from_str(&payload) {
        Ok(payload) => payload,
        Err(source) => return Ok(Err(DecodeError { id, source })),
    };
    let next_attempt_at: Option<DateTime<Utc>> = row.try_get(7)?;
    Ok(Ok(Message::new(
        id,
        row.try_get(2)?,
        unsigned(row.try_get(1)?),
        headers,
        payload,
        unsigned(row.try_get(5)?),
        row.try_get(6)?,
        next_attempt_at,
    )))
}

impl<H, P> PgSqlxOutboxPoller<H, P>
where
    H: DeserializeOwned,
    P: DeserializeOwned,
{
    async fn fetch(self, request: Fetch) -> Result<Vec<Message<H, P>>, Error> {
        let shared = &self.shared;
        let mut partitions = Vec::with_capacity(shared.owned.len());
        let mut after = Vec::with_capacity(shared.owned.len());
        for &partition in &shared.owned {
            if let Some(start) = request.start(partition) {
                partitions.push(i32::try_from(partition).unwrap_or(i32::MAX));
                // Ids are positive, so the smallest i64 reads from the oldest.
                after.push(start.map_or(i64::MIN, MessageId::get));
            }
        }
        let block = shared.policy == DeadLetterPolicy::Block;
        if block && !partitions.is_empty() {
            let blocked = shared.dead.blocked(&shared.pool, &partitions).await?;
            let (kept, cursors): (Vec<i32>, Vec<i64>) = partitions
                .iter()
                .zip(&after)
                .filter(|(p, _)| !blocked.contains(p))
                .unzip();
            (partitions, after) = (kept, cursors);
        }
        if partitions.is_empty() || request.per_partition == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(request.per_partition).unwrap_or(i64::MAX);
        let rows = sqlx::query(sql(&shared.queries.fetch))
            .bind(partitions)
            .bind(limit)
            .bind(after)
            .fetch_all(&shared.pool)
            .await?;

        let mut messages = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        let mut stopped: Vec<i32> = Vec::new();
        for row in &rows {
            // With the block policy a partition stops at its first row that
            // does not decode; the rows behind it wait for replay or purge.
            let partition: i32 = row.try_get(1)?;
            if stopped.contains(&partition) {
                continue;
            }
            match decode(row)? {
                Ok(message) => messages.push(message),
                Err(error) => {
                    undecodable.push(error);
                    if block {
                        stopped.push(partition);
                    }
                }
            }
        }
        if !undecodable.is_empty() {
            self.set_aside_undecodable(undecodable).await?;
        }
        Ok(messages)
    }

    /// Moves rows that do not decode to the dead letters, and wakes the next
    /// wait at once so the rows behind them are read without delay.
    async fn set_aside_undecodable(&self, errors: Vec<DecodeError>) -> Result<(), Error> {
        let mut ids = Vec::with_capacity(errors.len());
        let mut reasons = Vec::with_capacity(errors.len());
        for error in errors {
            tracing::warn!(message_id = %error.id, %error, "stored message does not decode, set aside");
            ids.push(error.id.get());
            reasons.push(error_chain(&error));
        }
        self.move_to_dead(ids, reasons).await?;
        listener::bump(&self.shared.wakeups);
        Ok(())
    }
}

impl<H, P> PgSqlxOutboxPoller<H, P> {
    async fn move_to_dead(&self, ids: Vec<i64>, reasons: Vec<String>) -> Result<(), Error> {
        sqlx::query(sql(&self.shared.queries.dead_letter))
            .bind(ids)
            .bind(reasons)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn complete(self, request: Complete) -> Result<(), Error> {
        let ids: Vec<i64> = request.ids.iter().map(|id| id.get()).collect();
        let text = match self.shared.deletion {
            DeletionMode::Physical => &self.shared.queries.delete,
            DeletionMode::Logical => &self.shared.queries.mark_delivered,
        };
        sqlx::query(sql(text))
            .bind(ids)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn fail(self, request: Fail) -> Result<(), Error> {
        sqlx::query(sql(&self.shared.queries.fail))
            .bind(request.id.get())
            .bind(request.next_attempt_at)
            .bind(request.error)
            .execute(&self.shared.pool)
            .await?;
        Ok(())
    }

    async fn dead_letter(self, request: DeadLetter) -> Result<(), Error> {
        self.move_to_dead(vec![request.id.get()], vec![request.reason])
            .await
    }

    /// Returns once the wake-up count differs from the one seen last, or
    /// after the poll interval (or `max_wait`, if shorter).
    async fn wait(self, request: WaitForWork) -> Result<(), Error> {
        let mut wakeups = self.shared.wakeups.subscribe();
        let interval = self.shared.poll_interval;
        let wait = request.max_wait.map_or(interval, |max| max.min(interval));

        let current = *wakeups.borrow_and_update();
        if self.seen.swap(current, Ordering::AcqRel) != current {
            return Ok(());
        }
        if let Ok(Ok(())) = tokio::time::timeout(wait, wakeups.changed()).await {
            self.seen
                .store(*wakeups.borrow_and_update(), Ordering::Release);
        }
        Ok(())
    }
}

/// Implements one poller request by calling an async method on a clone.
macro_rules! poller_service {
    ($request:ty, $response:ty, $method:ident, $($bound:tt)*) => {
        impl<H, P> Service<$request> for PgSqlxOutboxPoller<H, P>
        where
            $($bound)*
        {
            type Response = $response;
            type Error = BoxError;
            type Future = BoxFuture<'static, Result<$response, BoxError>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $request) -> Self::Future {
                let this = self.clone();
                Box::pin(async move { this.$method(request).await.map_err(BoxError::from) })
            }
        }
    };
}

poller_service!(Fetch, Vec<Message<H, P>>, fetch, H: DeserializeOwned + Send + 'static, P: DeserializeOwned + Send + 'static);
poller_service!(Complete, (), complete, H: 'static, P: 'static);
poller_service!(Fail, (), fail, H: 'static, P: 'static);
poller_service!(DeadLetter, (), dead_letter, H: 'static, P: 'static);
poller_service!(WaitForWork, (), wait, H: 'static, P: 'static);
