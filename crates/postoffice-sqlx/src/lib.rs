//! sqlx stores for [Postoffice], a transactional outbox for tower services.
//!
//! A service writes its rows and the messages announcing them in one database
//! transaction through an [`Outbox`](postoffice_core::Outbox) backed by
//! [`PgSqlxOutbox`]; a [`Producer`](postoffice_core::Producer) in the same
//! service relays the committed messages with a [`PgSqlxOutboxPoller`].
//!
//! # Features
//!
//! - `postgres` (default): the Postgres store, [`PgSqlxOutbox`] and
//!   [`PgSqlxOutboxPoller`]. See the [`postgres`] module for the schema,
//!   partitions, ordering, wake-up and deletion modes.
//! - `sqlite`: the SQLite store, the embedded default,
//!   [`SqliteSqlxOutbox`] and [`SqliteSqlxOutboxPoller`], with a bundled
//!   SQLite. See the [`sqlite`] module.
//!
//! Both stores share [`Error`] and [`DeletionMode`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use postoffice_core::{CancellationToken, Outbox, PartitionKey, Producer, Transport};
//! use postoffice_core::transport::InMemory;
//! use postoffice_sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller};
//!
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! struct Headers {
//!     order_id: i64,
//! }
//!
//! impl PartitionKey for Headers {
//!     fn partition_key(&self) -> Vec<u8> {
//!         self.order_id.to_be_bytes().to_vec()
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@localhost/app").await?;
//!
//! // Publish inside the business transaction.
//! let outbox = Outbox::new(PgSqlxOutbox::try_new(pool.clone()).await?);
//! let mut tx = pool.begin().await?;
//! outbox
//!     .publish_messages([(Headers { order_id: 7 }, "created".to_owned())], &mut tx)
//!     .await?;
//! tx.commit().await?;
//!
//! // Relay committed messages to a transport.
//! let poller =
//!     PgSqlxOutboxPoller::<Headers, String>::try_new(pool, Duration::from_secs(1)).await?;
//! let received = InMemory::default();
//! let producer = Producer::new(poller, Transport::new(received.clone()));
//! let token = CancellationToken::new();
//! let relay = tokio::spawn(producer.run(token.clone()));
//! received.wait_for(1, Duration::from_secs(5)).await?;
//! token.cancel();
//! relay.await??;
//! # let _: Vec<postoffice_core::Message<Headers, String>> = received.messages();
//! # Ok(())
//! # }
//! ```
//!
//! [Postoffice]: https://github.com/postoffice-rs/postoffice

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod deletion;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod limits;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use deletion::DeletionMode;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use error::Error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use limits::{MAX_PARTITIONS, MIN_POLL_INTERVAL};
#[cfg(feature = "postgres")]
pub use postgres::{
    PgSqlxOutbox, PgSqlxOutboxBuilder, PgSqlxOutboxPoller, PgSqlxOutboxPollerBuilder,
};
/// Re-exported: the dead-letter types of the pollers' `dead_letters` and
/// `dead_letter_policy`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use postoffice_core::{DeadLetterEntry, DeadLetterPolicy};
#[cfg(feature = "sqlite")]
pub use sqlite::{
    SqliteSqlxOutbox, SqliteSqlxOutboxBuilder, SqliteSqlxOutboxPoller,
    SqliteSqlxOutboxPollerBuilder,
};
