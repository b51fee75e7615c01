//! RabbitMQ transport for [Postoffice] on [lapin].
//!
//! [`RabbitMq`] is a `tower::Service<EncodedMessage>`: put an encoding layer
//! such as `JsonLayer` in front of it and hand it to a `Producer`. A call
//! resolves `Ok` only once the broker **confirmed** the message, so the
//! producer removes the outbox row only then.
//!
//! ```no_run
//! use postoffice_amqp::RabbitMq;
//! use postoffice_core::{JsonLayer, Producer, Transport, memory::InMemoryOutbox};
//! use tokio_util::sync::CancellationToken;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rabbit = RabbitMq::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .exchange("orders")
//!     .routing_key("order.event")
//!     .connect()
//!     .await?;
//!
//! let store = InMemoryOutbox::default();
//! let transport = Transport::new(ServiceBuilder::new().layer(JsonLayer::new()).service(rabbit));
//! let producer = Producer::new(store.poller::<serde_json::Value, serde_json::Value>(), transport)
//!     .in_flight_per_partition(32);
//! producer.run(CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Mapping
//!
//! By default a message is published to the configured
//! [exchange](RabbitMqBuilder::exchange) (default `""`, the default exchange)
//! with the routing key taken from the string header field `routing_key`
//! ([`routing_key_header`](RabbitMqBuilder::routing_key_header)) or, when the
//! headers have no such field, the fixed
//! [`routing_key`](RabbitMqBuilder::routing_key) (default `""`).
//! [`routing`](RabbitMqBuilder::routing) replaces this with a function.
//!
//! Every message carries these AMQP properties, which
//! [`properties`](RabbitMqBuilder::properties) can adjust:
//!
//! | property | value |
//! |---|---|
//! | `message_id` | the outbox message id, in decimal (kept whatever [`properties`](RabbitMqBuilder::properties) returns) |
//! | `content_type` | the encoded message's content type |
//! | `headers` | the string, number and boolean header fields as long strings, plus the encoder's attributes |
//! | `delivery_mode` | 2 (persistent) |
//! | `timestamp` | the message's creation time, in Unix seconds |
//!
//! # Confirms, returns and errors
//!
//! The channel is in confirm mode and every publish is `mandatory`. An ack
//! resolves the call; an unroutable message (returned by the broker), a nack,
//! a channel or connection failure and a missing confirm after
//! [`confirm_timeout`](RabbitMqBuilder::confirm_timeout) fail it with a
//! retryable error, so its row stays and is sent again.
//!
//! A message counts as delivered only when it was acked **and** the broker
//! did not return it. lapin hands each returned message to whichever confirm
//! it resolves next, which is not always the returned message's own when
//! several publishes wait for their confirms; so the transport matches
//! returns to publishes by the `message_id` property (the outbox id), never by
//! the confirm that carried them. The broker sends a message's return before
//! its ack, and every confirm is awaited to its end, even after its caller
//! timed out, so no return goes unseen.
//!
//! Two checks are made before publishing, because the broker reacts to
//! either by closing the channel or the connection that every message
//! shares: a body above
//! [`max_message_size`](RabbitMqBuilder::max_message_size) fails with
//! [`Error::TooLarge`], and properties and headers that do not fit in one
//! frame of the size negotiated with the broker (`frame_max`, 128 KiB by
//! default in RabbitMQ) fail with [`Error::HeadersTooLarge`]. Both are
//! permanent, so the producer sets that message aside and the others keep
//! flowing. The errors are [`SendError`](postoffice_core::SendError)s whose
//! source is an [`Error`].
//!
//! # Pipelining and order
//!
//! Up to [`max_in_flight`](RabbitMqBuilder::max_in_flight) messages may wait
//! for their confirm at once; `poll_ready` reserves one of these slots and
//! `call` takes it. `call` queues the message at once, and one background
//! task publishes the queue in call order on one channel, so the broker sees
//! a partition's messages in the order the producer called with them, and
//! `Producer::in_flight_per_partition` above 1 keeps per-key order.
//!
//! When a message fails, later messages with the same partition key that
//! were called before the producer saw that failure are held back
//! ([`Error::HeldBack`]) instead of overtaking it; the producer sends them
//! again, in order, after the failed one. Messages already published when the
//! failure happened may still arrive first; they arrive again after it
//! (a duplicate, never a gap).
//!
//! This holds for retries made by the producer, which stops the partition
//! and resends from the failed message. tower's `RetryLayer` in front of the
//! transport does not stop the partition: it resends the failed message
//! after its own sleep, while the producer keeps calling with the next
//! messages, so with `in_flight_per_partition` above 1 the retried message
//! reaches the broker after later messages of its key. Use `RetryLayer` only
//! with `Producer::in_flight_per_partition(1)`, or, when pipelining, leave
//! retries to the producer's partition backoff.
//!
//! # Recovery
//!
//! When the channel or the connection fails (broker restart, connection
//! closed by the server), the messages waiting for a confirm fail with a
//! retryable error and the background task reconnects with
//! [backoff](RabbitMqBuilder::reconnect_backoff) while new calls wait in the
//! queue; they are published once the connection is back, or fail after the
//! confirm timeout. The producer never needs restarting. A channel closed by
//! the broker on a live connection (for example after a publish to a missing
//! exchange) is reopened on the same connection.
//!
//! [Postoffice]: https://github.com/postoffice-rs/postoffice

mod error;
pub mod future;
mod order;
mod publisher;
mod route;
mod service;

pub use error::Error;
pub use route::{DEFAULT_ROUTING_KEY_HEADER, Route};
pub use service::{
    DEFAULT_CONFIRM_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE, RabbitMq,
    RabbitMqBuilder,
};

/// The AMQP client this transport is built on, re-exported so that
/// [`RabbitMqBuilder::properties`] can name `lapin::BasicProperties`.
pub use lapin;
