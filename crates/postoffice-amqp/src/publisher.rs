//! The background task that owns the connection: it publishes queued
//! messages in call order, resolves each call when the broker's confirm
//! arrives, and reconnects when the channel or the connection fails.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Event};
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

type Confirmed = (
    u64,
    Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>,
);

pub(crate) struct Publisher {
    pub(crate) connector: Connector,
    pub(crate) backoff: Backoff,
    pub(crate) order: Arc<Order>,
    pub(crate) reconnections: Arc<AtomicU64>,
    pub(crate) confirm_timeout: Duration,
    /// Published messages waiting for their confirm, by call number.
    waiting: HashMap<u64, Waiter>,
    confirms: FuturesUnordered<BoxFuture<'static, Confirmed>>,
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
                Some((seq, outcome)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.settle(seq, outcome)
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
                self.waiting.insert(seq, waiter);
                let confirmed = tokio::time::timeout_at(deadline, confirm);
                self.confirms
                    .push(confirmed.map(move |outcome| (seq, outcome)).boxed());
                true
            }
            Err(source) => {
                let id = waiter.id;
                self.finish(waiter, Err(Error::Connection { id, source }));
                false
            }
        }
    }

    /// Resolves a published message with its confirm; `false` when the
    /// channel failed.
    fn settle(
        &mut self,
        seq: u64,
        outcome: Result<Result<Confirmation, lapin::Error>, tokio::time::error::Elapsed>,
    ) -> bool {
        let Some(waiter) = self.waiting.remove(&seq) else {
            return true;
        };
        let id = waiter.id;
        let mut healthy = true;
        let result = match outcome {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
                Err(Error::Unroutable {
                    id,
                    exchange: returned.delivery.exchange.to_string(),
                    routing_key: returned.delivery.routing_key.to_string(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Ok(Ok(Confirmation::Nack(None) | Confirmation::NotRequested)) => {
                Err(Error::Nacked { id })
            }
            Ok(Err(source)) => {
                healthy = false;
                Err(Error::Connection { id, source })
            }
            Err(_elapsed) => Err(Error::ConfirmTimeout {
                id,
                timeout: self.confirm_timeout,
            }),
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
        let drain = async {
            while let Some((seq, outcome)) = self.confirms.next().await {
                self.settle(seq, outcome);
            }
        };
        let _ = tokio::time::timeout(CONFIRM_DRAIN, drain).await;
        self.confirms.clear();
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
