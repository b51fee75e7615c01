use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use postoffice_core::{EncodedMessage, SendError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::builder::{KafkaBuilder, Topic};
use crate::future::{ResponseFuture, classify};
use crate::queued::{Fingerprint, Queued, RecordKey};
use crate::{KafkaTransportError, ProduceError};

/// How often `poll_ready` looks again while the local queue is full.
const QUEUE_RECHECK: Duration = Duration::from_millis(5);

/// The Kafka header that carries the outbox message id.
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// The Kafka header that carries the body's MIME type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// What a confirmed send returns: where Kafka stored the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// The Kafka partition.
    pub partition: i32,
    /// The offset within that partition.
    pub offset: i64,
}

/// A transport that produces [`EncodedMessage`]s to Kafka with librdkafka.
///
/// Each call queues one record at once, in call order, and its future resolves
/// on the delivery report, so a message counts as sent only once the broker
/// stored it with `acks=all`. A call for a message whose earlier record
/// librdkafka still holds (its send timed out) queues nothing and waits for
/// that record's report instead; see the [crate docs](crate#delivery-order-and-failures). The record's key is the message's partition key,
/// so Kafka's partitioner keeps all messages of one key in one Kafka partition,
/// and the idempotent producer keeps them in order there. Headers on each
/// record:
///
/// - `message-id`: the outbox id, for deduplicating consumers;
/// - `content-type`: the body's MIME type;
/// - every scalar field of the user headers
///   ([`EncodedMessage::scalar_headers`]);
/// - every [`EncodedMessage::attributes`] pair as it is (for example the
///   `ce_*` headers of CloudEvents binary mode).
///
/// Failures are [`SendError`]s around a [`ProduceError`]: a message larger
/// than the producer or the broker accepts, or an invalid topic name, is
/// permanent and goes to the dead letters; full queues, timeouts and broker
/// outages are retryable and the row stays.
///
/// Clones share one producer. Keep a clone to [`flush`](Self::flush) after the
/// relay stopped:
///
/// ```no_run
/// use std::time::Duration;
/// use postoffice_core::{JsonLayer, Producer, Transport, memory::InMemoryOutbox};
/// use postoffice_kafka::Kafka;
/// use tokio_util::sync::CancellationToken;
/// use tower::ServiceBuilder;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let store = InMemoryOutbox::default();
/// let kafka = Kafka::builder("127.0.0.1:9092").topic("orders").build()?;
/// let transport =
///     Transport::new(ServiceBuilder::new().layer(JsonLayer::new()).service(kafka.clone()));
/// let producer = Producer::new(store.poller::<serde_json::Value, serde_json::Value>(), transport)
///     .in_flight_per_partition(32);
///
/// let token = CancellationToken::new();
/// # token.cancel();
/// producer.run(token).await?;
/// kafka.flush(Duration::from_secs(5)).await?;
/// # Ok(())
/// # }
/// ```
pub struct Kafka {
    producer: FutureProducer,
    queued: Arc<Queued>,
    topic: Topic,
    limits: Limits,
    waiting: Option<Waiting>,
}

/// The bounds a [`Kafka`] service keeps itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `poll_ready` reports room while fewer messages than this are queued.
    pub(crate) room_below: usize,
    /// How long `poll_ready` waits for room.
    pub(crate) queue_timeout: Duration,
    /// How long a send waits for its delivery report.
    pub(crate) message_timeout: Duration,
}

/// A `poll_ready` that waits for room in the local queue.
struct Waiting {
    deadline: Instant,
    recheck: Pin<Box<Sleep>>,
}

impl Clone for Kafka {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            queued: Arc::clone(&self.queued),
            topic: self.topic.clone(),
            limits: self.limits,
            waiting: None,
        }
    }
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("topic", &self.topic)
            .field("queued", &self.producer.in_flight_count())
            .field("tracked", &self.queued.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Kafka {
    /// Starts configuring a transport for the comma-separated `brokers`
    /// (`bootstrap.servers`).
    pub fn builder(brokers: impl Into<String>) -> KafkaBuilder {
        KafkaBuilder::new(brokers.into())
    }

    pub(crate) fn from_parts(producer: FutureProducer, topic: Topic, limits: Limits) -> Self {
        Self {
            producer,
            queued: Arc::default(),
            topic,
            limits,
            waiting: None,
        }
    }

    /// The librdkafka producer, for metrics or settings this type does not
    /// cover.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// How many messages wait in the local queue or for a delivery report.
    pub fn pending(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Waits until every queued message has a delivery report, at most
    /// `timeout`. Call it after [`Producer::run`](postoffice_core::Producer::run)
    /// returned and before dropping the last clone, so that no record the
    /// relay abandoned stays in librdkafka's memory. Rows of unconfirmed
    /// messages stay in the outbox either way and are sent again later.
    ///
    /// # Errors
    ///
    /// [`KafkaTransportError::FlushTimeout`] when messages remain after
    /// `timeout`; [`KafkaTransportError::Flush`] for other librdkafka errors.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaTransportError> {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let result = producer.flush(Timeout::After(timeout));
            (result, producer.in_flight_count())
        })
        .await;
        match flushed {
            Ok((Ok(()), _)) => Ok(()),
            Ok((Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)), pending)) => {
                Err(KafkaTransportError::FlushTimeout {
                    pending: usize::try_from(pending).unwrap_or(0),
                })
            }
            Ok((Err(error), _)) => Err(KafkaTransportError::Flush(error)),
            Err(_join) => Err(KafkaTransportError::FlushTimeout {
                pending: self.pending(),
            }),
        }
    }

    fn has_room(&self) -> bool {
        self.pending() < self.limits.room_below
    }
}

/// The record's headers, added to `fingerprint` as well.
fn headers(message: &EncodedMessage, fingerprint: &mut Fingerprint) -> OwnedHeaders {
    let mut add = |headers: OwnedHeaders, key: &str, value: &str| {
        fingerprint.add(key.as_bytes());
        fingerprint.add(value.as_bytes());
        headers.insert(Header {
            key,
            value: Some(value),
        })
    };
    let id = message.id().to_string();
    let mut headers = OwnedHeaders::new_with_capacity(2 + message.attributes.len());
    headers = add(headers, MESSAGE_ID_HEADER, &id);
    headers = add(headers, CONTENT_TYPE_HEADER, &message.content_type);
    for (name, value) in message.scalar_headers() {
        headers = add(headers, name, &value);
    }
    for (name, value) in &message.attributes {
        headers = add(headers, name, value);
    }
    headers
}

impl Service<EncodedMessage> for Kafka {
    type Response = Delivered;
    type Error = SendError;
    type Future = ResponseFuture;

    /// Ready while librdkafka's local queue has room; waits up to the queue
    /// timeout for room, then fails with a retryable [`ProduceError::QueueFull`].
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if self.has_room() {
                self.waiting = None;
                return Poll::Ready(Ok(()));
            }
            let timeout = self.limits.queue_timeout;
            let waiting = self.waiting.get_or_insert_with(|| Waiting {
                deadline: Instant::now() + timeout,
                recheck: Box::pin(tokio::time::sleep(QUEUE_RECHECK)),
            });
            if Instant::now() >= waiting.deadline {
                self.waiting = None;
                return Poll::Ready(Err(classify(ProduceError::QueueFull { waited: timeout })));
            }
            std::task::ready!(waiting.recheck.as_mut().poll(cx));
            waiting
                .recheck
                .as_mut()
                .reset(Instant::now() + QUEUE_RECHECK);
        }
    }

    /// Queues the record now, so records are queued in call order.
    ///
    /// When librdkafka still holds a record this service queued for the same
    /// message (same id, topic, key, headers and body), typically because an
    /// earlier send of it timed out, nothing is queued: the returned future
    /// waits for that record's delivery report, with a fresh deadline.
    fn call(&mut self, message: EncodedMessage) -> Self::Future {
        let topic = self.topic.of(&message);
        let key = message.meta.partition_key.as_slice();
        let mut fingerprint = Fingerprint::default();
        fingerprint.add(topic.as_bytes());
        fingerprint.add(key);
        fingerprint.add(&message.body);
        let headers = headers(&message, &mut fingerprint);
        let record_key = RecordKey::new(message.id(), fingerprint.finish());
        let timeout = self.limits.message_timeout;

        if let Some(delivery) = self.queued.get(&record_key) {
            tracing::debug!(
                message_id = %message.id(),
                %topic,
                "record still queued in librdkafka, waiting for its report instead of sending a copy"
            );
            return ResponseFuture::delivering(delivery, timeout, message.id(), topic);
        }

        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(message.body.as_ref())
            .headers(headers);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tracing::trace!(message_id = %message.id(), %topic, "message queued");
                let delivery = self.queued.track(record_key, delivery);
                ResponseFuture::delivering(delivery, timeout, message.id(), topic)
            }
            Err((source, _record)) => {
                ResponseFuture::failed(classify(ProduceError::Enqueue { topic, source }))
            }
        }
    }
}
