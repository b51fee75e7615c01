//! The relay loop: [`Producer`] reads committed messages from a poller and hands
//! them to a transport, partition by partition.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::{BoxFuture, OptionFuture, ready};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

mod ack;

use crate::poller::{Complete, DeadLetter, Fail, Fetch, Poller, WaitForWork};
use crate::retry::Backoff;
use crate::{
    BoxError, Message, MessageId, ProducerError, SendError, Transport, error_chain, is_permanent,
};
use ack::Acker;

/// Settings of a [`Producer`]; every setter on the producer documents its default.
#[derive(Debug, Clone)]
struct Config {
    batch_size: usize,
    in_flight_per_partition: usize,
    shutdown_grace: Duration,
    backoff: Backoff,
    max_attempts: Option<u32>,
    read_ahead: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_size: 100,
            in_flight_per_partition: 1,
            shutdown_grace: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_attempts: None,
            read_ahead: Some(Duration::from_secs(1)),
        }
    }
}

/// The relay: moves committed messages from a poller to a transport.
///
/// Each partition is served by one sender at a time, in id order, so messages
/// with the same partition key reach the transport in publish order; different
/// partitions are sent concurrently. A message is removed from the store only
/// after the transport confirmed it, and only the contiguous confirmed prefix
/// of a partition is removed.
///
/// A failed send stops its partition: the message is tried again after a
/// backoff (its attempt count and next-try time are kept in the store), while
/// every other partition goes on. A permanent failure, or reaching
/// [`max_attempts`](Self::max_attempts), moves the message to the dead
/// letters and the partition goes on with the next message.
///
/// ```
/// use std::time::Duration;
/// use postoffice_core::{Producer, Transport, memory::InMemoryOutbox, transport::InMemory};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryOutbox::default();
/// let producer = Producer::new(
///     store.poller::<serde_json::Value, serde_json::Value>(),
///     Transport::new(InMemory::default()),
/// )
/// .batch_size(500)
/// .shutdown_grace(Duration::from_secs(2));
///
/// let token = CancellationToken::new();
/// token.cancel();
/// producer.run(token).await?;
/// # Ok(())
/// # }
/// ```
pub struct Producer<Po, T, H, P> {
    poller: Po,
    transport: Transport<T>,
    config: Config,
    _types: PhantomData<fn() -> (H, P)>,
}

impl<Po: fmt::Debug, T: fmt::Debug, H, P> fmt::Debug for Producer<Po, T, H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("poller", &self.poller)
            .field("transport", &self.transport)
            .field("config", &self.config)
            .finish()
    }
}

impl<Po, T, H, P> Producer<Po, T, H, P> {
    /// A producer with default settings.
    pub fn new(poller: Po, transport: Transport<T>) -> Self {
        Self {
            poller,
            transport,
            config: Config::default(),
            _types: PhantomData,
        }
    }

    /// The most messages read from one partition per fetch (default 100, at
    /// least 1).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size.max(1);
        self
    }

    /// How many sends of one partition may wait for confirmation at once
    /// (default 1, at least 1).
    ///
    /// Sends are always started in id order, and none starts once a send of
    /// the batch failed. Above 1, sends overlap, so the order in which the
    /// broker sees them is the order in which the transport enqueues them:
    /// raise it only for transports that enqueue in call order (the RabbitMQ
    /// and Kafka transports do) and without layers that delay, retry or
    /// reorder calls. After a failure the partition starts again from the
    /// failed message, so sends after it that were already confirmed go out
    /// twice. Where the broker can refuse one message and accept the next
    /// (a RabbitMQ return or nack), those later messages reach the consumer
    /// before the failed one's retry; with 1 (the default) per-key order is
    /// strict.
    pub fn in_flight_per_partition(mut self, in_flight: usize) -> Self {
        self.config.in_flight_per_partition = in_flight.max(1);
        self
    }

    /// How long [`run`](Self::run) waits for in-flight sends after
    /// cancellation before abandoning them (default 10 s). Abandoned messages
    /// stay in the store and are sent again later.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// The wait before a failed partition is tried again (default
    /// [`Backoff::default`]: 100 ms doubling up to 60 s, with jitter). The
    /// wait grows with the message's stored attempt count.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// After this many failed sends a message goes to the dead letters
    /// (default `None`: retryable failures are retried without limit, keeping
    /// strict order).
    pub fn max_attempts(mut self, max_attempts: Option<u32>) -> Self {
        self.config.max_attempts = max_attempts.map(|n| n.max(1));
        self
    }

    /// Whether to read a partition's next batch while its current one is
    /// being sent, and for how long in a row (default `Some(1 s)`; `None`
    /// reads a partition only once it is idle).
    ///
    /// Reading ahead keeps the store busy while the transport works: after a
    /// full batch, the producer asks the poller for the partition's messages
    /// above the last id in flight (see [`Fetch`]'s `after`) and sends them as
    /// soon as the batch before them is confirmed and removed. It never
    /// changes the order of a partition's sends.
    ///
    /// A message whose transaction commits after higher ids of its partition
    /// were read is not seen by reads above those ids; it is read by the next
    /// read from the partition's oldest message. Read-ahead stops `window`
    /// after a partition's last such read, so, once the batches already read
    /// are sent, the partition goes idle and is read from its oldest message
    /// again: a late message waits at most `window` plus the time to send two
    /// batches longer than without read-ahead. A poller that ignores `after`
    /// gets the same requests as without read-ahead.
    pub fn read_ahead(mut self, window: Option<Duration>) -> Self {
        self.config.read_ahead = window;
        self
    }
}

/// What the producer needs of a transport service; implemented for every
/// service that fits.
pub trait Sender<H, P>:
    Service<
        Message<H, P>,
        Response: Send + 'static,
        Error: Into<BoxError> + 'static,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T, H, P> Sender<H, P> for T where
    T: Service<
            Message<H, P>,
            Response: Send + 'static,
            Error: Into<BoxError> + 'static,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Where a partition stands after its sender finished.
struct Outcome {
    partition: u32,
    retry_at: Option<Instant>,
    /// Every message of the batch was confirmed and removed, so the batch
    /// read after it may follow.
    clean: bool,
}

/// A partition whose batch is being sent.
struct Busy<H, P> {
    /// What the transport confirmed so far.
    confirmed: Confirmed,
    /// The last id of the batch being sent.
    last: MessageId,
    /// The batch was full and no read above it came back empty: more may wait.
    more: bool,
    /// When the partition was last read from its oldest message.
    since: Instant,
    /// The next batch, read ahead, sent once the current one is clean.
    next: Option<Vec<Message<H, P>>>,
}

/// The fetch in progress and the cursors it was sent with.
struct Fetching<H, P> {
    future: BoxFuture<'static, Result<Vec<Message<H, P>>, BoxError>>,
    started: Instant,
    /// Partitions read above a cursor: the cursor and the start of the
    /// partition's read-ahead streak. Moved to `discard` when the
    /// partition's batch ends unclean.
    cursors: HashMap<u32, (MessageId, Instant)>,
    /// Partitions read above a cursor whose batch below it ended unclean:
    /// what comes back for them skips unsent messages and is dropped, even
    /// if the partition is idle again by then.
    discard: HashSet<u32>,
}

/// A failed send: the message and its error.
struct Failure {
    id: MessageId,
    attempts: u32,
    error: BoxError,
}

type Confirmed = Arc<Mutex<Vec<MessageId>>>;

impl<Po, T, H, P> Producer<Po, T, H, P>
where
    Po: Poller<H, P>,
    T: Sender<H, P>,
    H: Send + 'static,
    P: Send + 'static,
{
    /// Relays until `token` is cancelled, then finishes in-flight sends within
    /// the [shutdown grace](Self::shutdown_grace) and returns.
    ///
    /// Store and broker failures do not end the loop: they are logged and
    /// retried with backoff.
    ///
    /// # Errors
    ///
    /// Reserved for failures the producer cannot recover from; none of the
    /// bundled pollers reports one today.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future instead of cancelling the token abandons in-flight
    /// sends at once. Nothing unconfirmed is removed either way; confirmed
    /// messages whose removal had not run yet are sent again later.
    pub async fn run(self, token: CancellationToken) -> Result<(), ProducerError> {
        let Self {
            poller,
            transport,
            config,
            ..
        } = self;
        let (acker, mut ack_task) = Acker::spawn(poller.clone());
        let mut relay = Relay {
            poller: poller.clone(),
            transport,
            config,
            acker,
            busy: HashMap::new(),
            blocked: HashMap::new(),
            jobs: FuturesUnordered::new(),
            stop: token.clone(),
        };
        let mut fetching: Option<Fetching<H, P>> = None;
        // When to start the next fetch; `None` waits for work first.
        let mut fetch_at = Some(Instant::now());
        let mut poller_failures = 0_u32;

        tracing::debug!("relay started");
        loop {
            let now = Instant::now();
            relay.blocked.retain(|_, due| *due > now);
            if fetching.is_none() && fetch_at.is_some_and(|at| at <= now) {
                fetch_at = None;
                fetching = Some(relay.fetch(now));
            }
            let idle = fetching.is_none();
            let max_wait = relay
                .blocked
                .values()
                .min()
                .map(|due| due.saturating_duration_since(now));
            let wait = call(poller.clone(), WaitForWork::new(max_wait));
            let backoff = tokio::time::sleep_until(fetch_at.unwrap_or(now));
            let in_flight = OptionFuture::from(fetching.as_mut().map(|f| &mut f.future));

            tokio::select! {
                biased;
                () = token.cancelled() => break,
                Some(outcome) = relay.jobs.next(), if !relay.jobs.is_empty() => {
                    relay.settle(outcome, fetching.as_mut());
                    // Partitions whose removal shared one store call finish
                    // together: serve them with one fetch, not one each.
                    while let Some(Some(outcome)) = relay.jobs.next().now_or_never() {
                        relay.settle(outcome, fetching.as_mut());
                    }
                    fetch_at = Some(now);
                }
                Some(fetched) = in_flight, if !idle => {
                    let Some(done) = fetching.take() else { continue };
                    match fetched {
                        Ok(messages) => {
                            poller_failures = 0;
                            if relay.take(messages, done) {
                                fetch_at = Some(fetch_at.map_or(now, |at| at.min(now)));
                            }
                        }
                        Err(error) => {
                            let delay = relay
                                .config
                                .backoff
                                .delay(poller_failures)
                                .min(MAX_POLLER_BACKOFF);
                            poller_failures = poller_failures.saturating_add(1);
                            tracing::warn!(error = %error_chain(error.as_ref()), ?delay, "fetching pending messages failed");
                            fetch_at = Some(after(delay));
                        }
                    }
                }
                () = backoff, if idle && fetch_at.is_some() => {}
                woke = wait, if idle && fetch_at.is_none() => {
                    if let Err(error) = woke {
                        tracing::warn!(error = %error_chain(error.as_ref()), "waiting for new messages failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    fetch_at = Some(Instant::now());
                }
            }
        }

        let Relay {
            config,
            jobs,
            busy,
            acker,
            ..
        } = relay;
        let busy = busy.into_iter().map(|(p, b)| (p, b.confirmed)).collect();
        let deadline = after(config.shutdown_grace);
        shutdown(poller, jobs, busy, deadline).await;
        drop(acker);
        if tokio::time::timeout_at(deadline, &mut ack_task)
            .await
            .is_err()
        {
            ack_task.abort();
            tracing::warn!("removal of confirmed messages still running at shutdown, abandoned");
        }
        tracing::debug!("relay stopped");
        Ok(())
    }
}

/// The loop's state between fetches.
struct Relay<Po, T, H, P> {
    poller: Po,
    transport: Transport<T>,
    config: Config,
    acker: Acker,
    busy: HashMap<u32, Busy<H, P>>,
    /// Partitions backing off after a failure, until the given time.
    blocked: HashMap<u32, Instant>,
    jobs: FuturesUnordered<BoxFuture<'static, Outcome>>,
    /// Cancelled when the relay stops: partitions start no new sends.
    stop: CancellationToken,
}

impl<Po, T, H, P> Relay<Po, T, H, P>
where
    Po: Poller<H, P>,
    T: Sender<H, P>,
    H: Send + 'static,
    P: Send + 'static,
{
    /// Starts a fetch of every idle partition, and of the busy ones that may
    /// read ahead, above their last id in flight.
    fn fetch(&self, now: Instant) -> Fetching<H, P> {
        let exclude = self
            .busy
            .keys()
            .chain(self.blocked.keys())
            .copied()
            .collect();
        let cursors: HashMap<u32, (MessageId, Instant)> = match self.config.read_ahead {
            Some(window) => self
                .busy
                .iter()
                .filter(|(_, b)| b.more && b.next.is_none() && now < b.since + window)
                .map(|(p, b)| (*p, (b.last, b.since)))
                .collect(),
            None => HashMap::new(),
        };
        let after = cursors.iter().map(|(p, (id, _))| (*p, *id)).collect();
        let request = Fetch::new(exclude, self.config.batch_size).with_after(after);
        Fetching {
            future: call(self.poller.clone(), request).boxed(),
            started: now,
            cursors,
            discard: HashSet::new(),
        }
    }

    /// Hands fetched messages to their partitions: idle partitions start
    /// sending, busy ones keep them as their next batch. Returns whether a
    /// busy partition could read ahead now.
    fn take(&mut self, messages: Vec<Message<H, P>>, done: Fetching<H, P>) -> bool {
        tracing::trace!(
            count = messages.len(),
            busy = self.busy.len(),
            ahead = done.cursors.len(),
            "fetched"
        );
        let Fetching {
            started,
            cursors,
            discard,
            ..
        } = done;
        let mut answered = Vec::new();
        for (partition, batch) in by_partition(messages) {
            answered.push(partition);
            if discard.contains(&partition) {
                continue;
            }
            match (cursors.get(&partition), self.busy.get_mut(&partition)) {
                // Read ahead while the batch before is still being sent.
                (Some((after, _)), Some(busy)) => {
                    let batch: Vec<_> = batch.into_iter().filter(|m| m.id > *after).collect();
                    if !batch.is_empty() {
                        busy.next = Some(batch);
                    }
                }
                // Read ahead, and the batch before finished clean meanwhile.
                (Some((after, since)), None) => {
                    let batch: Vec<_> = batch.into_iter().filter(|m| m.id > *after).collect();
                    if !batch.is_empty() && !self.blocked.contains_key(&partition) {
                        self.start(partition, batch, *since);
                    }
                }
                // A poller that ignored the exclusion: the batch is in flight.
                (None, Some(_)) => {}
                (None, None) => {
                    if !self.blocked.contains_key(&partition) {
                        self.start(partition, batch, started);
                    }
                }
            }
        }
        // A partition read above its cursor that got nothing has nothing
        // more for now. (One that got rows but had finished meanwhile was
        // started above and may read ahead again.)
        for partition in cursors.keys().filter(|p| !answered.contains(p)) {
            if let Some(busy) = self.busy.get_mut(partition) {
                busy.more = false;
            }
        }
        let window = self.config.read_ahead;
        let now = Instant::now();
        self.busy
            .values()
            .any(|b| b.more && b.next.is_none() && window.is_some_and(|w| now < b.since + w))
    }

    /// Starts sending a partition's batch, unless its head is not due yet.
    fn start(&mut self, partition: u32, batch: Vec<Message<H, P>>, since: Instant) {
        if let Some(due) = not_due(&batch) {
            self.blocked.insert(partition, due);
            return;
        }
        let Some(last) = batch.last().map(|m| m.id) else {
            return;
        };
        let confirmed = Confirmed::default();
        self.busy.insert(
            partition,
            Busy {
                confirmed: Arc::clone(&confirmed),
                last,
                more: batch.len() >= self.config.batch_size,
                since,
                next: None,
            },
        );
        let crew = Crew {
            poller: self.poller.clone(),
            acker: self.acker.clone(),
            transport: self.transport.clone(),
            config: self.config.clone(),
            stop: self.stop.clone(),
        };
        let job = serve_partition(crew, partition, batch, confirmed);
        let span = tracing::debug_span!("partition", partition);
        self.jobs.push(job.instrument(span).boxed());
    }

    /// Records a finished batch: the partition sends the batch read ahead,
    /// goes idle, or backs off.
    fn settle(&mut self, outcome: Outcome, fetching: Option<&mut Fetching<H, P>>) {
        let partition = outcome.partition;
        let Some(busy) = self.busy.remove(&partition) else {
            return;
        };
        if let Some(due) = outcome.retry_at {
            self.blocked.insert(partition, due);
        }
        if !outcome.clean {
            // What a running fetch reads above this batch must wait for the
            // rest of it: drop it when it comes.
            if let Some(fetching) = fetching
                && fetching.cursors.remove(&partition).is_some()
            {
                fetching.discard.insert(partition);
            }
            return;
        }
        if let Some(next) = busy.next {
            tracing::trace!(
                partition,
                count = next.len(),
                "sending the batch read ahead"
            );
            self.start(partition, next, busy.since);
        }
    }
}

/// Counter: sends the transport confirmed.
pub const METRIC_SENT: &str = "postoffice_sent_total";
/// Counter: confirmed messages removed (or marked delivered) in the store.
pub const METRIC_DELIVERED: &str = "postoffice_delivered_total";
/// Counter: failed sends that will be tried again.
pub const METRIC_RETRIED: &str = "postoffice_retried_total";
/// Counter: messages moved to the dead letters by the producer.
pub const METRIC_DEAD_LETTERED: &str = "postoffice_dead_lettered_total";
/// Histogram, seconds: from the message's commit (its created time, the
/// store's clock) to the start of its send.
pub const METRIC_COMMIT_TO_SEND: &str = "postoffice_commit_to_send_seconds";

/// Upper bound of the wait after a failed fetch.
const MAX_POLLER_BACKOFF: Duration = Duration::from_secs(5);

async fn call<S, R>(mut service: S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    ServiceExt::<R>::ready(&mut service)
        .await?
        .call(request)
        .await
}

/// Splits fetched messages by partition, keeping each partition's order.
fn by_partition<H, P>(messages: Vec<Message<H, P>>) -> Vec<(u32, Vec<Message<H, P>>)> {
    let mut groups: Vec<(u32, Vec<Message<H, P>>)> = Vec::new();
    let mut slot: HashMap<u32, usize> = HashMap::new();
    for message in messages {
        let index = *slot.entry(message.partition).or_insert_with(|| {
            groups.push((message.partition, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, group)) = groups.get_mut(index) {
            group.push(message);
        }
    }
    groups
}

/// When the head of a partition asked not to be tried before a later time.
fn not_due<H, P>(batch: &[Message<H, P>]) -> Option<Instant> {
    let next = batch.first()?.next_attempt_at?;
    let wait = (next - Utc::now())
        .to_std()
        .ok()
        .filter(|wait| !wait.is_zero())?;
    Some(after(wait))
}

fn take(confirmed: &Confirmed) -> Vec<MessageId> {
    std::mem::take(&mut *confirmed.lock().unwrap_or_else(PoisonError::into_inner))
}

/// What a partition's sender works with.
struct Crew<Po, T> {
    poller: Po,
    acker: Acker,
    transport: Transport<T>,
    config: Config,
    /// Cancelled when the relay stops.
    stop: CancellationToken,
}

/// Sends one partition's batch in order, removes the confirmed prefix and
/// records the failure that stopped it, if any.
async fn serve_partition<Po, T, H, P>(
    crew: Crew<Po, T>,
    partition: u32,
    batch: Vec<Message<H, P>>,
    confirmed: Confirmed,
) -> Outcome
where
    Po: Poller<H, P>,
    T: Sender<H, P>,
{
    let Crew {
        poller,
        acker,
        transport,
        config,
        stop,
    } = crew;
    let window = config.in_flight_per_partition;
    let failure = send_in_order(transport, batch, window, &confirmed, &stop).await;

    let ids = take(&confirmed);
    let mut removed = true;
    if !ids.is_empty() {
        let count = ids.len();
        match acker.complete(ids).await {
            Ok(()) => {
                metrics::counter!(METRIC_DELIVERED).increment(count as u64);
                tracing::debug!(count, "messages delivered");
            }
            Err(error) => {
                removed = false;
                tracing::warn!(%error, count, "removing confirmed messages failed, they will be sent again");
            }
        }
    }

    let clean = removed && failure.is_none();
    let retry_at = match failure {
        None => None,
        Some(failure) => record_failure(poller, config, failure).await,
    };
    Outcome {
        partition,
        retry_at,
        clean,
    }
}

async fn send_in_order<T, H, P>(
    mut transport: Transport<T>,
    batch: Vec<Message<H, P>>,
    window: usize,
    confirmed: &Confirmed,
    stop: &CancellationToken,
) -> Option<Failure>
where
    T: Sender<H, P>,
{
    let mut queue = batch.into_iter();
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Sent<T::Response>>> =
        FuturesOrdered::new();
    let mut stopped = false;
    // Set as soon as any send of this batch fails, even one that is not next
    // in order yet: no new send may start behind a failure.
    let failed = Arc::new(AtomicBool::new(false));
    loop {
        // After cancellation, sends already started finish; no new one starts.
        while !stopped
            && !stop.is_cancelled()
            && !failed.load(AtomicOrdering::Acquire)
            && in_flight.len() < window
        {
            let Some(message) = queue.next() else { break };
            let (id, attempts) = (message.id, message.attempts);
            let age = (Utc::now() - message.created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!(METRIC_COMMIT_TO_SEND).record(age.as_secs_f64());
            let send = match ServiceExt::<Message<H, P>>::ready(&mut transport).await {
                Ok(ready) => match catch_unwind(AssertUnwindSafe(|| ready.call(message))) {
                    Ok(sending) => confirm(id, attempts, sending, Arc::clone(&failed)).boxed(),
                    Err(panic) => {
                        stopped = true;
                        ready_failure(id, attempts, panicked(panic.as_ref()))
                    }
                },
                Err(error) => {
                    stopped = true;
                    ready_failure(id, attempts, error)
                }
            };
            in_flight.push_back(send);
        }
        match in_flight.next().await? {
            (id, _, Ok(_)) => {
                tracing::trace!(message_id = %id, "send confirmed");
                metrics::counter!(METRIC_SENT).increment(1);
                confirmed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(id);
            }
            (id, attempts, Err(error)) => {
                return Some(Failure {
                    id,
                    attempts,
                    error,
                });
            }
        }
    }
}

type Sent<R> = (MessageId, u32, Result<R, BoxError>);

/// Awaits a send; a panic inside the transport fails this message for good
/// instead of ending the relay.
async fn confirm<F, R>(id: MessageId, attempts: u32, send: F, failed: Arc<AtomicBool>) -> Sent<R>
where
    F: std::future::Future<Output = Result<R, BoxError>>,
{
    let result = match AssertUnwindSafe(send).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(panicked(panic.as_ref())),
    };
    if result.is_err() {
        failed.store(true, AtomicOrdering::Release);
    }
    (id, attempts, result)
}

fn ready_failure<R: Send + 'static>(
    id: MessageId,
    attempts: u32,
    error: BoxError,
) -> BoxFuture<'static, Sent<R>> {
    ready((id, attempts, Err(error))).boxed()
}

/// A permanent error for a transport that panicked on a message.
fn panicked(panic: &(dyn std::any::Any + Send)) -> BoxError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned());
    SendError::permanent(format!("the transport panicked: {text}")).into()
}

/// `Instant::now() + wait`, saturating far in the future instead of
/// overflowing.
fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait).unwrap_or_else(|| now + FAR_FUTURE)
}

/// What "never" means for deadlines: ten years.
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Dead-letters a permanent failure (or one past the attempt limit), or counts
/// the attempt and returns when the partition may try again.
async fn record_failure<Po, H, P>(poller: Po, config: Config, failure: Failure) -> Option<Instant>
where
    Po: Poller<H, P>,
{
    let Failure {
        id,
        attempts,
        error,
    } = failure;
    let attempt = attempts.saturating_add(1);
    let reason = error_chain(error.as_ref());
    let permanent = is_permanent(error.as_ref());
    let exhausted = config.max_attempts.is_some_and(|max| attempt >= max);

    if permanent || exhausted {
        tracing::warn!(message_id = %id, attempt, permanent, error = %reason, "message set aside");
        match call(poller.clone(), DeadLetter::new(id, reason)).await {
            Ok(()) => {
                metrics::counter!(METRIC_DEAD_LETTERED).increment(1);
                return None;
            }
            Err(error) => {
                tracing::warn!(message_id = %id, error = %error_chain(error.as_ref()), "setting the message aside failed");
                return Some(after(config.backoff.delay(attempts)));
            }
        }
    }

    let delay = config.backoff.delay(attempts);
    metrics::counter!(METRIC_RETRIED).increment(1);
    tracing::warn!(message_id = %id, attempt, ?delay, error = %reason, "send failed, partition paused");
    let next_attempt_at = Utc::now()
        + chrono::Duration::from_std(delay.min(FAR_FUTURE)).unwrap_or(chrono::Duration::MAX);
    if let Err(error) = call(poller.clone(), Fail::new(id, reason, next_attempt_at)).await {
        tracing::warn!(message_id = %id, error = %error_chain(error.as_ref()), "recording the failed attempt failed");
    }
    Some(after(delay))
}

/// Waits for in-flight partitions within the grace, then abandons the rest,
/// removing what they had confirmed.
async fn shutdown<Po, H, P>(
    poller: Po,
    mut jobs: FuturesUnordered<BoxFuture<'static, Outcome>>,
    mut busy: HashMap<u32, Confirmed>,
    deadline: Instant,
) where
    Po: Poller<H, P>,
{
    // Keep a share of the grace for removing what abandoned sends confirmed.
    let grace = deadline.saturating_duration_since(Instant::now());
    let reserve = (grace / 4).min(Duration::from_secs(1));
    let drain = async {
        while let Some(outcome) = jobs.next().await {
            busy.remove(&outcome.partition);
        }
    };
    if tokio::time::timeout_at(deadline - reserve, drain)
        .await
        .is_ok()
    {
        return;
    }

    drop(jobs);
    tracing::warn!(
        partitions = busy.len(),
        "shutdown grace over, abandoning in-flight sends"
    );
    let ids: Vec<MessageId> = busy.values().flat_map(take).collect();
    if ids.is_empty() {
        return;
    }
    let complete = call(poller, Complete::new(ids));
    match tokio::time::timeout_at(deadline, complete).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %error_chain(error.as_ref()), "removing confirmed messages at shutdown failed")
        }
        Err(_) => tracing::warn!("removing confirmed messages at shutdown timed out"),
    }
}
