//! [`RabbitMq`], the service, and its builder.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use lapin::BasicProperties;
use postoffice_core::retry::Backoff;
use postoffice_core::{EncodedMessage, SendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard, PollSemaphore};
use tower_service::Service;
use tracing::Instrument;

use crate::Error;
use crate::future::ResponseFuture;
use crate::order::Order;
use crate::publisher::{Connector, Job, Publisher, Waiter};
use crate::route::{Mapping, Route, header_frame_size};

/// Default of [`RabbitMqBuilder::confirm_timeout`].
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`RabbitMqBuilder::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default of [`RabbitMqBuilder::max_message_size`]: 128 MiB, RabbitMQ's own
/// default `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// A RabbitMQ transport: a `tower::Service` that publishes
/// [`EncodedMessage`]s with publisher confirms and resolves once the broker
/// confirmed each one.
///
/// See the [crate documentation](crate) for the mapping, ordering and
/// recovery rules. Clones share one connection, one channel and one window
/// of unconfirmed messages.
pub struct RabbitMq {
    shared: Arc<Shared>,
    semaphore: PollSemaphore,
    /// The window slot reserved by `poll_ready` for the next `call`.
    permit: Option<OwnedSemaphorePermit>,
}

/// State shared by the clones of a [`RabbitMq`] and their pending calls.
pub(crate) struct Shared {
    jobs: mpsc::UnboundedSender<Job>,
    pub(crate) order: Arc<Order>,
    mapping: Mapping,
    max_message_size: usize,
    /// The negotiated largest frame of the current connection.
    frame_max: Arc<AtomicU32>,
    confirm_timeout: Duration,
    reconnections: Arc<AtomicU64>,
    /// Stops the publisher when the last handle and call are gone.
    _stop: DropGuard,
}

impl Clone for RabbitMq {
    /// A handle on the same connection and window; the reservation made by
    /// `poll_ready` is not cloned.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMq")
            .field("mapping", &self.shared.mapping)
            .field("max_message_size", &self.shared.max_message_size)
            .field("confirm_timeout", &self.shared.confirm_timeout)
            .field("available_slots", &self.semaphore.available_permits())
            .field("reconnections", &self.reconnections())
            .finish()
    }
}

impl RabbitMq {
    /// Starts configuring a transport for the broker at `url`
    /// (`amqp://user:password@host:port/vhost`, the vhost URL-encoded:
    /// `%2f` for `/`).
    pub fn builder(url: impl Into<String>) -> RabbitMqBuilder {
        RabbitMqBuilder::new(url.into())
    }

    /// Connects with the default settings; see [`RabbitMqBuilder`].
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the first connection fails.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// How many times the transport reconnected to the broker since it was
    /// built (reopening only the channel does not count).
    pub fn reconnections(&self) -> u64 {
        self.shared.reconnections.load(Ordering::Relaxed)
    }

    fn fail(&self, key: Vec<u8>, error: Error) -> ResponseFuture {
        ResponseFuture::failed(Arc::clone(&self.shared), key, error)
    }
}

impl Service<EncodedMessage> for RabbitMq {
    type Response = ();
    type Error = SendError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if self.shared.jobs.is_closed() {
            return Poll::Ready(Err(Error::Stopped.into()));
        }
        match self.semaphore.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(Error::Stopped.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, message: EncodedMessage) -> Self::Future {
        let id = message.id();
        let key = message.meta.partition_key.clone();
        let Some(permit) = self.permit.take() else {
            return self.fail(key, Error::NotReady { id });
        };
        let max = self.shared.max_message_size;
        if message.body.len() > max {
            return self.fail(
                key,
                Error::TooLarge {
                    id,
                    size: message.body.len(),
                    max,
                },
            );
        }
        let mapped = match self.shared.mapping.map(&message) {
            Ok(mapped) => mapped,
            Err(error) => return self.fail(key, error),
        };
        // The properties travel in one content header frame: a larger one
        // makes the broker close the connection that every message shares.
        let frame_max = self.shared.frame_max.load(Ordering::Relaxed);
        if frame_max > 0 {
            let size = header_frame_size(&mapped.properties);
            if size > frame_max as usize {
                return self.fail(
                    key,
                    Error::HeadersTooLarge {
                        id,
                        size,
                        max: frame_max as usize,
                    },
                );
            }
        }

        let (reply, receiver) = oneshot::channel();
        let timeout = self.shared.confirm_timeout;
        let deadline = Instant::now() + timeout;
        let waiter = Waiter {
            id,
            key: key.clone(),
            reply,
            permit,
        };
        let queued = self.shared.order.admit(|seq| {
            let job = Job {
                seq,
                deadline,
                mapped,
                body: message.body,
                waiter,
            };
            self.shared.jobs.send(job).is_ok()
        });
        if !queued {
            return self.fail(key, Error::Stopped);
        }
        ResponseFuture::waiting(
            Arc::clone(&self.shared),
            id,
            key,
            receiver,
            deadline,
            timeout,
        )
    }
}

/// Configures and connects a [`RabbitMq`]; from [`RabbitMq::builder`].
pub struct RabbitMqBuilder {
    connector: Connector,
    mapping: Mapping,
    confirm_timeout: Duration,
    max_in_flight: usize,
    max_message_size: usize,
    backoff: Backoff,
}

impl fmt::Debug for RabbitMqBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBuilder")
            .field("connection_name", &self.connector.connection_name)
            .field("mapping", &self.mapping)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_message_size", &self.max_message_size)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl RabbitMqBuilder {
    fn new(url: String) -> Self {
        Self {
            connector: Connector {
                url,
                connection_name: None,
                frame_max: Arc::new(AtomicU32::new(0)),
            },
            mapping: Mapping::default(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// The exchange of the default mapping (default `""`, the default
    /// exchange, which routes to the queue named by the routing key).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.mapping.exchange = exchange.into();
        self
    }

    /// The routing key of the default mapping when the message has no
    /// routing-key header (default `""`).
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.mapping.routing_key = routing_key.into();
        self
    }

    /// The header field whose string value is the routing key in the default
    /// mapping (default [`DEFAULT_ROUTING_KEY_HEADER`](crate::DEFAULT_ROUTING_KEY_HEADER),
    /// `"routing_key"`); `None` always uses the fixed
    /// [`routing_key`](Self::routing_key).
    pub fn routing_key_header(mut self, field: Option<&str>) -> Self {
        self.mapping.routing_key_header = field.map(str::to_owned);
        self
    }

    /// Replaces the default mapping of exchange and routing key with `route`.
    pub fn routing<F>(mut self, route: F) -> Self
    where
        F: Fn(&EncodedMessage) -> Route + Send + Sync + 'static,
    {
        self.mapping.route = Some(Arc::new(route));
        self
    }

    /// Adjusts the AMQP properties of each message: `customize` receives the
    /// defaults (`message_id`, `content_type`, headers, persistent delivery
    /// mode, timestamp) and returns the properties to publish with.
    ///
    /// The `message_id` stays the outbox id whatever `customize` returns: the
    /// transport matches a message the broker returns as unroutable to its
    /// publish by that property.
    pub fn properties<F>(mut self, customize: F) -> Self
    where
        F: Fn(&EncodedMessage, BasicProperties) -> BasicProperties + Send + Sync + 'static,
    {
        self.mapping.properties = Some(Arc::new(customize));
        self
    }

    /// How long a call may wait for the broker's confirm, counted from the
    /// call, so it includes the time queued behind other messages and any
    /// wait for a reconnection (default 30 s).
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// The most messages published or queued without a confirm yet (default
    /// 256, at least 1). `poll_ready` waits for a free slot.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// The largest body published (default 128 MiB). A larger one fails at
    /// once with the permanent [`Error::TooLarge`], without reaching the
    /// broker; set it to the broker's `max_message_size` or below, since a
    /// publish above that closes the channel and disturbs the messages that
    /// share it.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The wait between reconnection attempts (default 100 ms doubling up to
    /// 10 s, with jitter). The first attempt after a failure is immediate.
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The connection name shown by the broker's management tools.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connector.connection_name = Some(name.into());
        self
    }

    /// Connects, opens a confirm-mode channel and starts the background
    /// publisher on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the broker cannot be reached or refuses the
    /// connection. Later failures are retried in the background.
    pub async fn connect(self) -> Result<RabbitMq, Error> {
        let link = self.connector.open().await.map_err(Error::Connect)?;
        let order = Arc::new(Order::default());
        let reconnections = Arc::new(AtomicU64::new(0));
        let frame_max = Arc::clone(&self.connector.frame_max);
        let (jobs, receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let publisher = Publisher::new(
            self.connector,
            self.backoff,
            Arc::clone(&order),
            Arc::clone(&reconnections),
            self.confirm_timeout,
        );
        tokio::spawn(
            publisher
                .run(link, receiver, stop.clone())
                .in_current_span(),
        );

        let shared = Arc::new(Shared {
            jobs,
            order,
            mapping: self.mapping,
            max_message_size: self.max_message_size,
            frame_max,
            confirm_timeout: self.confirm_timeout,
            reconnections,
            _stop: stop.drop_guard(),
        });
        let semaphore = PollSemaphore::new(Arc::new(Semaphore::new(self.max_in_flight)));
        Ok(RabbitMq {
            shared,
            semaphore,
            permit: None,
        })
    }
}
