//! The background task that owns the connection: it publishes queued
//! messages in call order, resolves each call when the broker's confirm
//! arrives, and reconnects when the channel or the connection fails.

use std::collections::{HashMap, VecDeque};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use futures_util::stream::{FuturesUnordered, Stream};
use futures_util::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event, PublisherConfirm};
use postoffice_core::MessageId;
use postoffice_core::retry::Backoff;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::order::Order;
use crate::route::Mapped;

/// One call of the service, queued for the publisher.
pub(crate) struct Job {
    pub(crate) seq: u64,
    pub(crate) deadline: Instant,
    pub(crate) mapped: Mapped,
    pub(crate) body: Bytes,
    pub(crate) waiter: Waiter,
}

/// The caller's side of a queued or published message.
pub(crate) struct Waiter {
    pub(crate) id: MessageId,
    pub(crate) key: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
    /// The window slot, released when the waiter is dropped.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Connection settings of the publisher.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) url: String,
    pub(crate) connection_name: Option<String>,
    /// The largest frame the current connection takes (0 until the first
    /// connection), read by the service to check a message's header size.
    pub(crate) frame_max: Arc<AtomicU32>,
}

/// An open connection and its confirm-mode channel.
pub(crate) struct Link {
    connection: Connection,
    channel: Channel,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl Connector {
    pub(crate) async fn open(&self) -> Result<Link, lapin::Error> {
        let mut properties = ConnectionProperties::default();
        if let Some(name) = &self.connection_name {
            properties = properties.with_connection_name(LongString::from(name.as_str()));
        }
        let connection = Connection::connect(&self.url, properties).await?;
        self.frame_max
            .store(connection.configuration().frame_max(), Ordering::Relaxed);
        let channel = open_channel(&connection).await?;
        let events = Box::pin(connection.events_listener());
        Ok(Link {
            connection,
            channel,
            events,
        })
    }
}

async fn open_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// How long a failed channel's pending confirms may take to report its error.
const CONFIRM_DRAIN: Duration = Duration::from_millis(100);

/// What became of the confirm of one publish.
struct Settled {
    /// The call number of the publish.
    seq: u64,
    id: MessageId,
    outcome: Outcome,
}

enum Outcome {
    /// The broker answered, or the channel failed, before the confirm
    /// timeout.
    Answered(Result<Confirmation, lapin::Error>),
    /// The confirm timeout passed first. The confirm is still awaited: lapin
    /// may hand it a message the broker returned, and that return must not be
    /// missed.
    TimedOut(PublisherConfirm),
    /// The answer to a publish whose caller already got a timeout.
    Late(Result<Confirmation, lapin::Error>),
}

/// Why the broker returned a message.
struct Returned {
    exchange: String,
    routing_key: String,
    reply_code: u16,
    reply_text: String,
}

impl Returned {
    fn into_error(self, id: MessageId) -> Error {
        Error::Unroutable {
            id,
            exchange: self.exchange,
            routing_key: self.routing_key,
            reply_code: self.reply_code,
            reply_text: self.reply_text,
        }
    }
}

/// Awaits the confirm of call `seq` until `deadline` (none for a confirm
/// whose caller already timed out).
fn awaiting(
    seq: u64,
    id: MessageId,
    confirm: PublisherConfirm,
    deadline: Option<Instant>,
) -> BoxFuture<'static, Settled> {
    async move {
        let outcome = match deadline {
            None => Outcome::Late(confirm.await),
            Some(deadline) => {
                let timer = pin!(tokio::time::sleep_until(deadline));
                match futures_util::future::select(confirm, timer).await {
                    Either::Left((answer, _)) => Outcome::Answered(answer),
                    Either::Right(((), confirm)) => Outcome::TimedOut(confirm),
                }
            }
        };
        Settled { seq, id, outcome }
    }
    .boxed()
}

pub(crate) struct Publisher {
    pub(crate) connector: Connector,
    pub(crate) backoff: Backoff,
    pub(crate) order: Arc<Order>,
    pub(crate) reconnections: Arc<AtomicU64>,
    pub(crate) confirm_timeout: Duration,
    /// Published messages waiting for their confirm, by call number.
    waiting: HashMap<u64, Waiter>,
    /// The confirms awaited on the current channel, including those whose
    /// caller already timed out.
    confirms: FuturesUnordered<BoxFuture<'static, Settled>>,
    /// How many publishes of each message id await their confirm.
    unconfirmed: HashMap<MessageId, usize>,
    /// Messages the broker returned whose publish's confirm is not processed
    /// yet, by the `message_id` property they carry.
    returned: HashMap<MessageId, VecDeque<Returned>>,
}

impl Publisher {
    pub(crate) fn new(
        connector: Connector,
        backoff: Backoff,
        order: Arc<Order>,
        reconnections: Arc<AtomicU64>,
        confirm_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            backoff,
            order,
            reconnections,
            confirm_timeout,
            waiting: HashMap::new(),
            confirms: FuturesUnordered::new(),
            unconfirmed: HashMap::new(),
            returned: HashMap::new(),
        }
    }

    /// Runs until `stop` is cancelled (the last handle and response future
    /// are gone).
    pub(crate) async fn run(
        mut self,
        link: Link,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        stop: CancellationToken,
    ) {
        let mut link = Some(link);
        let mut healthy = true;
        loop {
            let usable = link
                .as_mut()
                .filter(|l| healthy && l.channel.status().connected());
            let Some(current) = usable else {
                self.fail_waiting().await;
                match self.reconnect(link.take(), &stop).await {
                    Some(fresh) => {
                        link = Some(fresh);
                        healthy = true;
                    }
                    None => break,
                }
                continue;
            };

            // Each branch says whether the channel is still usable.
            healthy = tokio::select! {
                () = stop.cancelled() => break,
                Some(first) = self.confirms.next(), if !self.confirms.is_empty() => {
                    // Take every confirm that is ready now, so that a return
                    // lapin handed to one of them is known before any ack
                    // among them counts as delivered.
                    let mut batch = vec![first];
                    while let Some(Some(more)) = self.confirms.next().now_or_never() {
                        batch.push(more);
                    }
                    self.settle_all(batch)
                }
                job = jobs.recv() => match job {
                    Some(job) => self.publish(&current.channel, job).await,
                    None => break,
                },
                event = current.events.next() => match event {
                    // Channel errors are reported here too; the channel's own
                    // status (checked above) covers those.
                    Some(Event::Error(error)) if !current.connection.status().connected() => {
                        tracing::warn!(%error, "the connection to the broker failed");
                        false
                    }
                    Some(_) => true,
                    None => false,
                },
            };
        }

        self.fail_waiting().await;
        if let Some(link) = link {
            let closing = link
                .connection
                .close(200, "postoffice transport dropped".into());
            let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        }
    }

    /// Publishes one message; `false` when the channel failed.
    async fn publish(&mut self, channel: &Channel, job: Job) -> bool {
        let Job {
            seq,
            deadline,
            mapped,
            body,
            waiter,
        } = job;
        if waiter.reply.is_closed() {
            // The caller timed out or went away: nobody waits for a confirm.
            return true;
        }
        if self.order.holds_back(&waiter.key, waiter.id, seq) {
            let id = waiter.id;
            self.finish(waiter, Err(Error::HeldBack { id }));
            return true;
        }

        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let Mapped {
            exchange,
            routing_key,
            properties,
        } = mapped;
        match channel
            .basic_publish(exchange, routing_key, options, &body, properties)
            .await
        {
            Ok(confirm) => {
                let id = waiter.id;
                self.waiting.insert(seq, waiter);
                *self.unconfirmed.entry(id).or_default() += 1;
                self.confirms
                    .push(awaiting(seq, id, confirm, Some(deadline)));
                true
            }
            Err(source) => {
                let id = waiter.id;
                self.finish(waiter, Err(Error::Connection { id, source }));
                false
            }
        }
    }

    /// Resolves the published messages whose confirms are in `batch`;
    /// `false` when the channel failed.
    ///
    /// lapin hands a message the broker returned to whichever confirm it
    /// resolves next, which need not be the returned message's own (several
    /// confirms may resolve at once, in no particular order). So the returns
    /// of the whole batch are collected first, keyed by the `message_id`
    /// property the transport sets to the outbox id, and a message counts as
    /// delivered only when it was acked and no return carries its id. The
    /// broker sends a message's return before its ack, and lapin resolves the
    /// confirm that carries a return no later than the returned message's
    /// own, so the return is known by the time that ack is processed.
    fn settle_all(&mut self, mut batch: Vec<Settled>) -> bool {
        for settled in &mut batch {
            // A confirm that timed out may have been answered since, carrying
            // another message's return.
            if let Outcome::TimedOut(confirm) = &mut settled.outcome
                && let Some(answer) = confirm.now_or_never()
            {
                settled.outcome = Outcome::Answered(answer);
            }
            if let Outcome::Answered(Ok(confirmation)) | Outcome::Late(Ok(confirmation)) =
                &mut settled.outcome
                && let Confirmation::Ack(returned) | Confirmation::Nack(returned) = confirmation
                && let Some(message) = returned.take()
            {
                self.note_returned(message, settled.id);
            }
        }
        let mut healthy = true;
        for settled in batch {
            healthy &= self.settle(settled);
        }
        healthy
    }

    /// Records a message the broker returned, under its `message_id`;
    /// `carrier` is the message whose confirm lapin handed it to.
    fn note_returned(&mut self, message: BasicReturnMessage, carrier: MessageId) {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<i64>().ok())
            .map(MessageId::new);
        let returned = Returned {
            exchange: message.delivery.exchange.to_string(),
            routing_key: message.delivery.routing_key.to_string(),
            reply_code: message.reply_code,
            reply_text: message.reply_text.to_string(),
        };
        match id {
            Some(id) if self.unconfirmed.contains_key(&id) => {
                tracing::debug!(
                    message_id = %id,
                    exchange = %returned.exchange,
                    routing_key = %returned.routing_key,
                    reply_code = returned.reply_code,
                    carried_by = %carrier,
                    "the broker returned a message"
                );
                self.returned.entry(id).or_default().push_back(returned);
            }
            _ => tracing::error!(
                message_id = ?message.delivery.properties.message_id(),
                exchange = %returned.exchange,
                routing_key = %returned.routing_key,
                reply_code = returned.reply_code,
                "the broker returned a message that no awaited confirm belongs to; if it was counted as delivered, it is lost"
            ),
        }
    }

    /// Records that one publish of `id` got its answer; returns the return
    /// the broker sent for it, if any.
    fn answered(&mut self, id: MessageId) -> Option<Returned> {
        match self.unconfirmed.get_mut(&id) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                self.unconfirmed.remove(&id);
            }
        }
        let mut returns = self.returned.remove(&id)?;
        let returned = returns.pop_front();
        if !returns.is_empty() {
            self.returned.insert(id, returns);
        }
        returned
    }

    /// Resolves one published message; `false` when the channel failed.
    fn settle(&mut self, settled: Settled) -> bool {
        let Settled { seq, id, outcome } = settled;
        let answer = match outcome {
            Outcome::TimedOut(confirm) => {
                if let Some(waiter) = self.waiting.remove(&seq) {
                    let timeout = self.confirm_timeout;
                    self.finish(waiter, Err(Error::ConfirmTimeout { id, timeout }));
                }
                self.confirms.push(awaiting(seq, id, confirm, None));
                return true;
            }
            Outcome::Late(answer) => {
                let returned = self.answered(id);
                tracing::debug!(
                    message_id = %id,
                    acked = matches!(answer, Ok(Confirmation::Ack(_))),
                    returned = returned.is_some(),
                    "late confirm"
                );
                return answer.is_ok();
            }
            Outcome::Answered(answer) => answer,
        };
        let returned = self.answered(id);
        let Some(waiter) = self.waiting.remove(&seq) else {
            return answer.is_ok();
        };
        let mut healthy = true;
        let result = match answer {
            Ok(Confirmation::Ack(_)) => match returned {
                None => Ok(()),
                Some(returned) => Err(returned.into_error(id)),
            },
            Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => match returned {
                None => Err(Error::Nacked { id }),
                Some(returned) => Err(returned.into_error(id)),
            },
            Err(source) => {
                healthy = false;
                Err(Error::Connection { id, source })
            }
        };
        self.finish(waiter, result);
        healthy
    }

    /// Hands the result to the caller; a failure first blocks later messages
    /// of the same key (see [`Order`]).
    fn finish(&self, waiter: Waiter, result: Result<(), Error>) {
        match &result {
            Ok(()) => tracing::debug!(message_id = %waiter.id, "publish confirmed"),
            Err(error) => {
                if !waiter.reply.is_closed() {
                    self.order.fail(&waiter.key, waiter.id);
                }
                tracing::debug!(message_id = %waiter.id, %error, "publish failed");
            }
        }
        let Waiter { reply, permit, .. } = waiter;
        let _ = reply.send(result);
        drop(permit);
    }

    /// Fails every published message still waiting for its confirm.
    async fn fail_waiting(&mut self) {
        // The confirms of a failed channel resolve with its error right after
        // the channel's status changes: give them a moment, to keep the cause.
        let mut batch = Vec::new();
        let confirms = &mut self.confirms;
        let drain = async {
            while let Some(settled) = confirms.next().await {
                batch.push(settled);
            }
        };
        let _ = tokio::time::timeout(CONFIRM_DRAIN, drain).await;
        self.settle_all(batch);
        // The channel is gone: so are the confirms still awaited and the
        // returns that belong to them.
        self.confirms.clear();
        self.unconfirmed.clear();
        self.returned.clear();
        let mut waiting: Vec<(u64, Waiter)> = self.waiting.drain().collect();
        waiting.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, waiter) in waiting {
            let id = waiter.id;
            self.finish(waiter, Err(Error::ConnectionLost { id }));
        }
    }

    /// Opens a new channel on the old connection if it still works, or a new
    /// connection, retrying with backoff until it succeeds or `stop` fires.
    async fn reconnect(&mut self, old: Option<Link>, stop: &CancellationToken) -> Option<Link> {
        if let Some(old) = old {
            if old.channel.status().connected() {
                let closing = old
                    .channel
                    .close(200, "postoffice reopens the channel".into());
                let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
            }
            if old.connection.status().connected() {
                match open_channel(&old.connection).await {
                    Ok(channel) => {
                        tracing::warn!("reopened the channel to the broker");
                        return Some(Link { channel, ..old });
                    }
                    Err(error) => tracing::warn!(%error, "reopening the channel failed"),
                }
            }
            let closing = old.connection.close(200, "postoffice reconnects".into());
            let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        }

        let mut attempt: u32 = 0;
        loop {
            let delay = if attempt == 0 {
                Duration::ZERO
            } else {
                self.backoff.delay(attempt - 1)
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            let opened = tokio::select! {
                () = stop.cancelled() => return None,
                opened = self.connector.open() => opened,
            };
            attempt = attempt.saturating_add(1);
            match opened {
                Ok(link) => {
                    self.reconnections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt, "reconnected to the broker");
                    return Some(link);
                }
                Err(error) => tracing::warn!(%error, attempt, "reconnecting to the broker failed"),
            }
        }
    }
}
