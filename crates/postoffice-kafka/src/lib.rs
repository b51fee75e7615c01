//! Kafka transport for [Postoffice], on [`rdkafka`].
//!
//! [`Kafka`] is a `tower::Service` that produces
//! [`EncodedMessage`](postoffice_core::EncodedMessage)s, the output of
//! [`JsonLayer`](postoffice_core::JsonLayer) or the CloudEvents layer, and
//! resolves each call on its delivery report. The producer is idempotent with
//! `acks=all`; the record key is the outbox partition key, so every message of
//! one key lands in one Kafka partition in publish order; the outbox id travels
//! in the `message-id` header.
//!
//! ```no_run
//! use std::time::Duration;
//! use postoffice_core::{JsonLayer, Transport};
//! use postoffice_kafka::Kafka;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kafka = Kafka::builder("127.0.0.1:9092")
//!     .topic("orders")
//!     .message_timeout(Duration::from_secs(30))
//!     .set("linger.ms", "10")
//!     .build()?;
//! let transport = Transport::new(ServiceBuilder::new().layer(JsonLayer::new()).service(kafka));
//! # let _ = transport;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery, order and failures
//!
//! A row leaves the outbox only after its delivery report said `Ok`. Records
//! are queued in call order, so with the idempotent producer a
//! [`Producer`](postoffice_core::Producer) may keep several sends of one
//! outbox partition in flight
//! ([`in_flight_per_partition`](postoffice_core::Producer::in_flight_per_partition)).
//!
//! librdkafka never expires a record here (`message.timeout.ms=0`); the
//! service keeps the [message timeout](KafkaBuilder::message_timeout) itself.
//! When a broker stalls or a topic does not exist yet, the sends fail as
//! retryable at their deadline while librdkafka keeps the records and
//! delivers them, in order, once the broker answers or the topic appears.
//!
//! The relay's retries do not pile up copies meanwhile: the service remembers
//! each record librdkafka still holds (by outbox id and a hash of topic, key,
//! headers and body), and a send of the same message while that record is
//! queued waits for its delivery report instead of queueing another copy. So
//! an outage of any length leaves one record per message in librdkafka's
//! queue, and the map holds no more entries than that queue (an entry goes
//! away when its report arrives). A copy is still sent when a retry comes
//! after the report arrived but before the relay saw it (the send waiting for
//! it had timed out): consumers may see a message twice, with the same
//! `message-id`, never a gap.
//!
//! Waiting for the queued record also keeps key order. The relay sends a
//! partition's messages in id order, so their first records were queued in
//! that order, and a retry that attaches to one keeps its place in the queue
//! instead of moving the message behind later ones. A new copy is queued only
//! for a message whose earlier record already has its report; when that
//! report was a delivery, the message's first arrival is already in place, so
//! the first arrival of every message in Kafka stays in publish order per key.
//!
//! A message too large for `message.max.bytes` (or refused as too large by
//! the broker) fails as permanent and goes to the dead letters while the
//! other messages keep flowing.
//!
//! After a fatal librdkafka error (reported as `Fatal` in the delivery
//! error), the producer instance cannot send again: every send then fails as
//! retryable, and the service must be rebuilt with [`Kafka::builder`].
//!
//! # Shutdown
//!
//! [`Producer::run`](postoffice_core::Producer::run) waits for in-flight sends
//! within its shutdown grace. Then call [`Kafka::flush`] on a clone you kept,
//! with a deadline, before dropping the last clone: dropping a producer purges
//! whatever it still holds (those rows stay in the outbox and are sent again
//! on the next start).
//!
//! # Building
//!
//! `rdkafka` compiles its bundled librdkafka (2.12) with `./configure` and
//! `make`, and zlib from source, so a C and C++ compiler and `make` are all
//! the system needs (on Debian: `gcc g++ make`). No OpenSSL or SASL support is
//! built in; enable `rdkafka`'s `ssl` or `sasl` features in your own manifest
//! if your brokers need them.
//!
//! [Postoffice]: https://github.com/postoffice-rs/postoffice

mod builder;
mod error;
pub mod future;
mod queued;
mod service;

pub use builder::KafkaBuilder;
pub use error::{KafkaTransportError, ProduceError};
pub use service::{CONTENT_TYPE_HEADER, Delivered, Kafka, MESSAGE_ID_HEADER};

/// The `rdkafka` crate this transport is built on, for its configuration and
/// message types.
pub use rdkafka;
