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
mod service;

pub use builder::KafkaBuilder;
pub use error::{KafkaTransportError, ProduceError};
pub use service::{CONTENT_TYPE_HEADER, Delivered, Kafka, MESSAGE_ID_HEADER};

/// The `rdkafka` crate this transport is built on, for its configuration and
/// message types.
pub use rdkafka;
