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
//! - `sqlite`: reserved for the SQLite store.
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

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "postgres")]
pub use postgres::{
    DeletionMode, Error, PgSqlxOutbox, PgSqlxOutboxBuilder, PgSqlxOutboxPoller,
    PgSqlxOutboxPollerBuilder,
};
