use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use postoffice_core::EncodedMessage;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::service::Limits;
use crate::{Kafka, KafkaTransportError};

/// librdkafka's own default for `queue.buffering.max.messages`.
const LIBRDKAFKA_QUEUE_MESSAGES: usize = 100_000;

/// How a message's topic is chosen.
#[derive(Clone)]
pub(crate) enum Topic {
    Fixed(Arc<str>),
    Mapped(Arc<dyn Fn(&EncodedMessage) -> String + Send + Sync>),
}

impl Topic {
    pub(crate) fn of(&self, message: &EncodedMessage) -> String {
        match self {
            Self::Fixed(name) => name.to_string(),
            Self::Mapped(map) => map(message),
        }
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(name) => f.debug_tuple("Fixed").field(name).finish(),
            Self::Mapped(_) => f.write_str("Mapped(..)"),
        }
    }
}

/// Configures a [`Kafka`] transport; made by [`Kafka::builder`].
///
/// The producer is always idempotent with `acks=all` and at most five
/// requests in flight per connection, which keeps each Kafka partition in
/// enqueue order across retries. [`set`](Self::set) cannot change those three.
#[derive(Clone)]
pub struct KafkaBuilder {
    config: ClientConfig,
    topic: Option<Topic>,
    message_timeout: Duration,
    queue_timeout: Duration,
}

impl fmt::Debug for KafkaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBuilder")
            .field("topic", &self.topic)
            .field("message_timeout", &self.message_timeout)
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaBuilder {
    pub(crate) fn new(brokers: String) -> Self {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        config.set("client.id", "postoffice");
        Self {
            config,
            topic: None,
            message_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(5),
        }
    }

    /// Sends every message to `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(Topic::Fixed(topic.into().into()));
        self
    }

    /// Chooses each message's topic with `map`, for example from a header.
    ///
    /// ```
    /// # use postoffice_kafka::Kafka;
    /// let builder = Kafka::builder("127.0.0.1:9092").topic_fn(|message| {
    ///     let kind = message.headers.get("kind").and_then(|kind| kind.as_str());
    ///     format!("shop.{}", kind.unwrap_or("misc"))
    /// });
    /// # let _ = builder;
    /// ```
    pub fn topic_fn<F>(mut self, map: F) -> Self
    where
        F: Fn(&EncodedMessage) -> String + Send + Sync + 'static,
    {
        self.topic = Some(Topic::Mapped(Arc::new(map)));
        self
    }

    /// How long a send waits for its delivery report (default 30 s). Past
    /// it the send fails with a retryable [`ProduceError::Timeout`] and the
    /// outbox row stays.
    ///
    /// The deadline is kept by this service, not by librdkafka: the producer
    /// runs with `message.timeout.ms=0` (no local expiry), so librdkafka keeps
    /// retrying a late record in order and never drops it from the middle of
    /// a partition. A record that timed out here may therefore still arrive.
    /// A retry while librdkafka still holds the record waits for that record
    /// with a fresh deadline instead of queueing a copy, so a long outage
    /// queues one record per message, not one per attempt; a retry after
    /// the record was delivered sends a copy, which arrives after it: a
    /// duplicate, never a gap or a reordering. Setting `message.timeout.ms`
    /// with [`set`](Self::set) gives that expiry back to librdkafka and loses
    /// this property.
    ///
    /// [`ProduceError::Timeout`]: crate::ProduceError::Timeout
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// How long the service waits in `poll_ready` for room in librdkafka's
    /// local queue before failing with a retryable error (default 5 s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Sets any librdkafka producer property, such as `linger.ms`,
    /// `compression.type` or `message.max.bytes`.
    ///
    /// `enable.idempotence`, `acks` and
    /// `max.in.flight.requests.per.connection` are always set by
    /// [`build`](Self::build) and cannot be changed here.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Creates the producer. It connects in the background; an unreachable
    /// broker shows up as delivery failures, not here.
    ///
    /// # Errors
    ///
    /// [`KafkaTransportError::NoTopic`] when no topic mapping was set,
    /// [`KafkaTransportError::Create`] when librdkafka refuses the
    /// configuration.
    pub fn build(self) -> Result<Kafka, KafkaTransportError> {
        let Self {
            mut config,
            topic,
            message_timeout,
            queue_timeout,
        } = self;
        let topic = topic.ok_or(KafkaTransportError::NoTopic)?;

        if config.get("message.timeout.ms").is_none() {
            config.set("message.timeout.ms", "0");
        }
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        config.set("max.in.flight.requests.per.connection", "5");

        let queue_limit = config
            .get("queue.buffering.max.messages")
            .and_then(|value| value.parse().ok())
            .unwrap_or(LIBRDKAFKA_QUEUE_MESSAGES);
        let producer: FutureProducer = config.create().map_err(KafkaTransportError::Create)?;
        tracing::debug!(?topic, "kafka producer created");
        Ok(Kafka::from_parts(
            producer,
            topic,
            Limits {
                room_below: room_below(queue_limit),
                queue_timeout,
                message_timeout,
            },
        ))
    }
}

/// The queue length below which `poll_ready` reports room: nine tenths of
/// librdkafka's limit, so that clones racing past the check rarely meet a
/// full queue in `call`.
fn room_below(limit: usize) -> usize {
    (limit - limit / 10).max(1)
}
