//! Core of [Postoffice], a transactional outbox for tower services.
//!
//! A service writes its rows and the messages announcing them in one database
//! transaction through an [`Outbox`]; a [`Producer`] in the same service reads
//! the committed messages from a poller and hands them to a [`Transport`],
//! removing each only after the transport confirmed it.
//!
//! This crate holds what every store and transport plugs into, and no database
//! or broker code:
//!
//! - the message model: [`Message`], [`MessageId`], [`PartitionKey`],
//!   [`EncodedMessage`];
//! - the publishing front [`Outbox`] and the store request [`Publish`];
//! - the relay [`Producer`] and the poller requests in [`poller`];
//! - [`Transport`], the in-memory transport [`transport::InMemory`] and the
//!   encoding layer [`JsonLayer`];
//! - the in-memory store [`memory::InMemoryOutbox`];
//! - errors and the retry policy in [`retry`].
//!
//! Most users depend on the `postoffice` crate, which re-exports all of this
//! next to the database stores and broker transports.
//!
//! [Postoffice]: https://github.com/postoffice-rs/postoffice

pub mod dead_letter;
mod error;
pub mod json;
pub mod memory;
mod message;
mod outbox;
pub mod poller;
mod producer;
pub mod retry;
pub mod transport;

pub use dead_letter::{DeadLetterEntry, DeadLetterPolicy};
pub use error::{
    BoxError, DecodeError, ProducerError, PublishError, SendError, SendErrorKind, error_chain,
    is_permanent,
};
pub use json::{Json, JsonLayer};
pub use message::{
    DEFAULT_PARTITIONS, EncodedMessage, Message, MessageId, MessageMeta, NewMessage, PartitionKey,
    partition_for,
};
pub use outbox::{Outbox, Publish};
pub use poller::Poller;
pub use producer::{Producer, Sender};

/// Names of the metrics the [`Producer`] records through the [`metrics`]
/// facade. Install any `metrics` recorder (Prometheus, StatsD, ...) to export
/// them; without one they cost next to nothing.
///
/// [`metrics`]: https://docs.rs/metrics
pub mod metric_names {
    pub use crate::producer::{
        METRIC_COMMIT_TO_SEND, METRIC_DEAD_LETTERED, METRIC_DELIVERED, METRIC_RETRIED, METRIC_SENT,
    };
}
pub use transport::Transport;

/// Re-exported so users name the token type without another dependency.
pub use tokio_util::sync::CancellationToken;
