//! Transactional outbox for Rust services, built on tower.
//!
//! A service writes its business rows and the messages announcing them in
//! **one database transaction**; a relay in the same service reads the
//! committed messages and hands them to RabbitMQ, Kafka or an in-memory
//! transport through `tower` services. A message is published if and only if
//! its transaction commits, and reaches the broker at least once, even across
//! crashes.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | [`outbox::sqlx::PgSqlxOutbox`] and its poller |
//! | `sqlite` | no | `outbox::sqlx::SqliteSqlxOutbox` and its poller, the embedded default |
//! | `amqp` | no | `transport::RabbitMq` on lapin (more in `transport::amqp`) |
//! | `kafka` | no | `transport::Kafka` on rdkafka |
//! | `cloudevents` | no | `JsonCloudEventsLayer` |
//!
//! # Example
//!
//! Publishing and relaying on the in-memory store and transport (the database
//! stores take a sqlx transaction instead of `store.begin()`):
//!
//! ```
//! use std::time::Duration;
//! use postoffice::outbox::memory::InMemoryOutbox;
//! use postoffice::transport::InMemory;
//! use postoffice::{CancellationToken, EncodedMessage, JsonLayer, Outbox, PartitionKey, Producer, Transport};
//! use tower::ServiceBuilder;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderEvent {
//!     order_id: u64,
//! }
//!
//! impl PartitionKey for OrderEvent {
//!     fn partition_key(&self) -> Vec<u8> {
//!         self.order_id.to_be_bytes().to_vec()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryOutbox::default();
//! let outbox = Outbox::new(store.clone());
//!
//! let mut tx = store.begin();
//! outbox.publish_messages([(OrderEvent { order_id: 7 }, "created")], &mut tx).await?;
//! tx.commit();
//!
//! let received: InMemory<EncodedMessage> = InMemory::default();
//! let transport = Transport::new(
//!     ServiceBuilder::new().layer(JsonLayer::new()).service(received.clone()),
//! );
//! let producer = Producer::new(store.poller::<OrderEvent, String>(), transport);
//! let token = CancellationToken::new();
//! let relay = tokio::spawn(producer.run(token.clone()));
//!
//! let got = received.wait_for(1, Duration::from_secs(5)).await?;
//! assert_eq!(&got[0].body[..], br#""created""#);
//! token.cancel();
//! relay.await??;
//! # Ok(())
//! # }
//! ```

pub use postoffice_core::{
    BoxError, CancellationToken, DEFAULT_PARTITIONS, DecodeError, EncodedMessage, Json, JsonLayer,
    Message, MessageId, MessageMeta, NewMessage, Outbox, PartitionKey, Poller, Producer,
    ProducerError, Publish, PublishError, SendError, SendErrorKind, Sender, Transport, error_chain,
    is_permanent, partition_for,
};
pub use postoffice_core::{poller, retry};

/// Stores: the publishing front and the database and in-memory outboxes.
pub mod outbox {
    pub use postoffice_core::{NewMessage, Outbox, PartitionKey, Publish, PublishError};

    /// The in-memory store, for tests and small services.
    pub mod memory {
        pub use postoffice_core::memory::*;
    }

    /// The sqlx stores: Postgres (feature `postgres`) and SQLite (feature
    /// `sqlite`). The `postoffice-sqlx` crate docs describe the schema and
    /// migrations, partitions, order across transactions, wake-up, deletion
    /// modes and dead letters; both builders take `.schema(..)`/`.table(..)`,
    /// and the outbox and its pollers must be given the same names and
    /// partition count.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub mod sqlx {
        pub use postoffice_core::PartitionKey;
        pub use postoffice_sqlx::*;
    }
}

/// Transports: the in-memory one and, behind features, RabbitMQ and Kafka.
pub mod transport {
    pub use postoffice_core::transport::*;

    /// The RabbitMQ transport and its builder, errors and routing. The
    /// `postoffice-amqp` crate docs describe the mapping to AMQP properties,
    /// confirms and returns, pipelining and reconnection.
    #[cfg(feature = "amqp")]
    pub mod amqp {
        pub use postoffice_amqp::*;
    }
    #[cfg(feature = "amqp")]
    pub use postoffice_amqp::RabbitMq;

    /// The Kafka transport and its builder and errors. The
    /// `postoffice-kafka` crate docs describe delivery, timeouts, order and
    /// the librdkafka build.
    #[cfg(feature = "kafka")]
    pub mod kafka {
        pub use postoffice_kafka::*;
    }
    #[cfg(feature = "kafka")]
    pub use postoffice_kafka::Kafka;
}

/// Encoding layers that turn messages into broker payloads.
pub mod layer {
    pub use postoffice_core::json::{APPLICATION_JSON, Json, JsonLayer, encode_json};

    /// CloudEvents 1.0 encoding (feature `cloudevents`).
    #[cfg(feature = "cloudevents")]
    pub mod cloudevents {
        pub use postoffice_cloudevents::*;
    }
    #[cfg(feature = "cloudevents")]
    pub use postoffice_cloudevents::{BinaryMode, JsonCloudEvents, JsonCloudEventsLayer};
}

#[cfg(feature = "cloudevents")]
pub use postoffice_cloudevents::JsonCloudEventsLayer;

/// The README's Rust snippets, compiled as doc tests.
#[cfg(all(
    doctest,
    feature = "postgres",
    feature = "amqp",
    feature = "kafka",
    feature = "cloudevents"
))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
