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
use super::schema::{Names, Queries, max_partition, sql};
use super::{DeletionMode, Error, Options, listener};
use crate::limits::{MIN_POLL_INTERVAL, PartitionWatch, Stuck, check_stored, owned_partitions};

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
    /// Rows that do not decode and could not be set aside.
    stuck: Stuck,
    /// When to look for pending rows beyond the partition count.
    watch: PartitionWatch,
    /// The outbox table, for log lines.
    table: String,
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

    /// The longest wait between polls, at least
    /// [`MIN_POLL_INTERVAL`](crate::MIN_POLL_INTERVAL).
    pub fn poll_interval(&self) -> Duration {
        self.shared.poll_interval
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
    /// free a partition, and a purge also frees a row that could not be set
    /// aside because its id was taken in the dead-letter table.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the statement fails.
    pub async fn purge(&self, ids: &[MessageId]) -> Result<u64, Error> {
        let purged = self.shared.dead.purge(&self.shared.pool, ids).await?;
        self.shared.stuck.forget(ids);
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
    /// 1, at most [`MAX_PARTITIONS`](crate::MAX_PARTITIONS)); must match the
    /// publishing store's. See the [module docs](super#partitions).
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.options.partitions = partitions.max(1);
        self
    }

    /// The partitions this poller serves (default: all; not none). Pollers
    /// in one process must own disjoint sets, so that each partition has one
    /// sender.
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

    /// The longest wait between polls (default 1 s, at least
    /// [`MIN_POLL_INTERVAL`](crate::MIN_POLL_INTERVAL): a shorter one is
    /// raised to it). With notify on this is the fallback when a
    /// notification is lost.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval.max(MIN_POLL_INTERVAL);
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
    /// [`Error::TooManyPartitions`] for a count above
    /// [`MAX_PARTITIONS`](crate::MAX_PARTITIONS), [`Error::NoPartitions`] for
    /// an empty owned set, [`Error::PartitionOutOfRange`] for an owned
    /// partition not below the partition count, [`Error::PartitionMismatch`]
    /// when pending messages sit in a partition not below the count (the
    /// publisher uses another count), [`Error::Schema`] when the tables are
    /// missing and creating them is off, [`Error::Database`] when the
    /// database fails.
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
        let owned = owned_partitions(partitions, owned)?;

        let names = Names::new(&options.schema, &options.table)?;
        names.ensure(&pool, options.migrate).await?;
        let queries = Queries::new(&names);
        check_stored(max_partition(&pool, &queries).await?, partitions)?;

        let wakeups = Arc::new(watch::Sender::new(0));
        let listener = if options.notify {
            Some(listener::spawn(&pool, names.channel(), Arc::clone(&wakeups)).await?)
        } else {
            None
        };
        let shared = Shared {
            pool,
            queries,
            stuck: Stuck::default(),
            watch: PartitionWatch::new(),
            table: names.outbox(),
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

/// A fetched row that does not decode into a message.
struct Unreadable {
    id: MessageId,
    partition: u32,
    reason: String,
}

/// Decodes one fetched row, or says why it does not decode. Only the id and
/// partition must be readable; any other column that does not decode (a
/// timestamp out of chrono's range, say) makes the row unreadable, like
/// headers or a payload that do not deserialize.
fn decode<H: DeserializeOwned, P: DeserializeOwned>(
    row: &PgRow,
) -> Result<Result<Message<H, P>, Unreadable>, sqlx::Error> {
    let id = MessageId::new(row.try_get(0)?);
    let partition = unsigned(row.try_get(1)?);
    Ok(read(row, id, partition).map_err(|reason| Unreadable {
        id,
        partition,
        reason,
    }))
}

fn read<H: DeserializeOwned, P: DeserializeOwned>(
    row: &PgRow,
    id: MessageId,
    partition: u32,
) -> Result<Message<H, P>, String> {
    let column = |name: &'static str| {
        move |error: sqlx::Error| format!("column {name} does not decode: {}", error_chain(&error))
    };
    let json = |source: serde_json::Error| error_chain(&DecodeError { id, source });
    let headers: String = row.try_get(3).map_err(column("headers"))?;
    let payload: String = row.try_get(4).map_err(column("payload"))?;
    let headers = serde_json::from_str(&headers).map_err(json)?;
    let payload = serde_json::from_str(&payload).map_err(json)?;
    let next_attempt_at: Option<DateTime<Utc>> =
        row.try_get(7).map_err(column("next_attempt_at"))?;
    Ok(Message::new(
        id,
        row.try_get(2).map_err(column("partition_key"))?,
        partition,
        headers,
        payload,
        unsigned(row.try_get(5).map_err(column("attempts"))?),
        row.try_get(6).map_err(column("created_at"))?,
        next_attempt_at,
    ))
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
        let mut rows = sqlx::query(sql(&shared.queries.fetch))
            .bind(partitions)
            .bind(limit)
            .bind(after)
            .fetch_all(&shared.pool)
            .await?;
        // The statement has no outer ORDER BY (a sort of the wide rows cost
        // about 15% of the fetch); the nested loop already yields them by
        // partition and id, so this sort only checks one run, in linear time.
        rows.sort_by_key(|row| {
            let partition: i32 = row.try_get(1).unwrap_or(i32::MAX);
            let id: i64 = row.try_get(0).unwrap_or(i64::MAX);
            (partition, id)
        });

        let mut messages = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
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
                Err(row) => {
                    unreadable.push(row);
                    if block {
                        stopped.push(partition);
                    }
                }
            }
        }
        if !unreadable.is_empty() {
            // A partition whose unreadable row stays in the outbox stops
            // there: nothing behind the row is returned.
            let held = self.set_aside_unreadable(unreadable).await?;
            messages.retain(|m| {
                !held
                    .iter()
                    .any(|(partition, id)| m.partition == *partition && m.id > *id)
            });
        }
        self.check_partitions().await;
        Ok(messages)
    }

    /// Moves rows that do not decode to the dead letters, and wakes the next
    /// wait at once so the rows behind them are read without delay. Returns
    /// the rows left in the outbox (their id is taken in the dead-letter
    /// table), as `(partition, id)`; a row left there is tried again after a
    /// pause, and logged as an error each time.
    async fn set_aside_unreadable(
        &self,
        rows: Vec<Unreadable>,
    ) -> Result<Vec<(u32, MessageId)>, Error> {
        let mut held = Vec::new();
        let mut attempted = Vec::with_capacity(rows.len());
        for row in rows {
            if self.shared.stuck.due(row.id) {
                attempted.push(row);
            } else {
                held.push((row.partition, row.id));
            }
        }
        if attempted.is_empty() {
            return Ok(held);
        }
        let ids = attempted.iter().map(|row| row.id.get()).collect();
        let reasons = attempted.iter().map(|row| row.reason.clone()).collect();
        let stuck = self.move_to_dead(ids, reasons).await?;
        let mut moved = Vec::with_capacity(attempted.len());
        for row in &attempted {
            if stuck.contains(&row.id) {
                tracing::error!(
                    message_id = %row.id,
                    partition = row.partition,
                    reason = %row.reason,
                    "stored message does not decode and could not be set aside: \
                     the dead-letter table already holds its id; its partition waits"
                );
                held.push((row.partition, row.id));
            } else {
                tracing::warn!(
                    message_id = %row.id,
                    partition = row.partition,
                    reason = %row.reason,
                    "stored message does not decode, set aside"
                );
                moved.push(row.id);
            }
        }
        self.shared.stuck.record(&moved, &stuck);
        if !moved.is_empty() {
            listener::bump(&self.shared.wakeups);
        }
        Ok(held)
    }
}

impl<H, P> PgSqlxOutboxPoller<H, P> {
    /// Moves rows to the dead letters with their reasons, and returns the
    /// ids of the rows that stay in the outbox because the dead-letter table
    /// already holds their id. Ids not in the outbox are ignored.
    async fn move_to_dead(
        &self,
        ids: Vec<i64>,
        reasons: Vec<String>,
    ) -> Result<Vec<MessageId>, Error> {
        let stuck: Vec<i64> = sqlx::query_scalar(sql(&self.shared.queries.dead_letter))
            .bind(ids)
            .bind(reasons)
            .fetch_all(&self.shared.pool)
            .await?;
        Ok(stuck.into_iter().map(MessageId::new).collect())
    }

    /// Now and then, looks for pending rows in partitions beyond the count
    /// and warns once when there are some: no poller of this count serves
    /// them. A failure of the check is only logged.
    async fn check_partitions(&self) {
        let shared = &self.shared;
        if !shared.watch.due() {
            return;
        }
        match max_partition(&shared.pool, &shared.queries).await {
            Ok(max) => shared.watch.report(max, shared.partitions, &shared.table),
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "checking the stored partitions failed");
            }
        }
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
        let ids = self
            .move_to_dead(vec![request.id.get()], vec![request.reason])
            .await?;
        if ids.is_empty() {
            Ok(())
        } else {
            Err(Error::NotSetAside { ids })
        }
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
