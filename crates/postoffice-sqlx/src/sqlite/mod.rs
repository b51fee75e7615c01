//! The SQLite store, the embedded default: [`SqliteSqlxOutbox`] writes
//! messages inside the caller's transaction, [`SqliteSqlxOutboxPoller`] reads
//! them back for a [`Producer`](postoffice_core::Producer). SQLite is bundled
//! (compiled into the program), so no server and no system library is needed.
//!
//! # Connecting
//!
//! Open the database file with WAL journaling, so that the relay reads while
//! the application writes, and a busy timeout, since SQLite allows one
//! writer at a time and the relay writes too (deleting delivered rows):
//!
//! ```no_run
//! use std::time::Duration;
//! use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
//!
//! # async fn example() -> Result<(), sqlx::Error> {
//! let options = SqliteConnectOptions::new()
//!     .filename("app.db")
//!     .create_if_missing(true)
//!     .journal_mode(SqliteJournalMode::Wal)
//!     .busy_timeout(Duration::from_secs(5));
//! let pool = SqlitePoolOptions::new().connect_with(options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A `:memory:` database is private to one connection, so publisher and relay
//! only see the same messages through a pool of one connection; use a file.
//!
//! # Schema
//!
//! The tables are defined by the SQL files in `migrations/sqlite/` (shipped
//! with this crate), written with the default names: table
//! `postoffice_outbox` and dead-letter table `postoffice_outbox_dead`. Either
//! let `try_new`/`build` create them when they are missing (inside one
//! `BEGIN IMMEDIATE` transaction; every statement is `create … if not
//! exists`), or run the files with your own migration tool, for example
//! `sqlx::migrate!("path/to/migrations/sqlite")`, and build with
//! [`migrate(false)`](SqliteSqlxOutboxBuilder::migrate), which only checks the
//! tables and fails with [`Error::Schema`](crate::Error::Schema) when they are
//! missing. With another table name, replace `postoffice_outbox` in the files
//! yourself. Headers and payload are stored as the JSON text the publisher
//! serialized; times are UTC text (`YYYY-MM-DDTHH:MM:SS.SSSZ`).
//!
//! # Publishing
//!
//! All messages of one call are written by one `INSERT … SELECT` statement
//! that reads the batch from a single JSON array parameter (`json_each`), so
//! SQLite's limit on bound parameters (32,766) never splits a batch, whatever
//! its size. Partitions are computed in Rust with
//! [`partition_for`](postoffice_core::partition_for), as for Postgres:
//! publisher and pollers must use the same partition count.
//!
//! # Partitions
//!
//! As for Postgres: the partition count (at most
//! [`MAX_PARTITIONS`](crate::MAX_PARTITIONS)) belongs to the outbox; change it
//! only while the outbox is empty. Both builders refuse with
//! [`Error::PartitionMismatch`](crate::Error::PartitionMismatch) an outbox
//! holding pending rows in a partition not below their count, and a running
//! poller warns once when such rows appear (it looks every 10 seconds).
//!
//! # Order
//!
//! SQLite runs one write transaction at a time: a transaction that publishes
//! holds the write lock until it commits or rolls back, and every other writer
//! waits (up to the busy timeout). Ids come from an `AUTOINCREMENT` key, so
//! they are never reused and follow the commit order exactly: messages are
//! delivered per key in the order their transactions committed, and in call
//! order within a transaction. A transaction that commits after the relay
//! polled is still delivered: the relay never moves past pending rows.
//!
//! # Wake-up
//!
//! SQLite has no `NOTIFY`. Stores and pollers of the same database file and
//! table in one process share a wake-up counter. Publishing arms a commit hook
//! on the caller's connection (through sqlx's `lock_handle`): the commit of
//! that transaction bumps the counter, a rollback disarms it, so a
//! rolled-back publish wakes nobody. SQLite runs the hook just before the
//! commit finishes, so a woken poller first waits for the write lock (`BEGIN
//! IMMEDIATE`, then rollback) and only then reads; it therefore never polls
//! too early and misses the rows.
//!
//! Limits: the hook replaces any commit or rollback hook the application set
//! on that connection itself; publishers in another process (or writing with
//! plain SQL) are not heard and are found at the next poll interval, the
//! fallback in every case.
//!
//! # Deletion modes and dead letters
//!
//! As for Postgres: [`DeletionMode::Physical`](crate::DeletionMode::Physical)
//! deletes confirmed rows, [`DeletionMode::Logical`](crate::DeletionMode::Logical)
//! sets `delivered_at`, polls read through a partial index over pending rows,
//! and [`SqliteSqlxOutboxPoller::purge_delivered`] removes old delivered rows.
//! A row whose headers or payload no longer deserialize into the poller's
//! `(H, P)`, or one of whose other columns cannot be read (a time that does
//! not parse), is moved to the dead-letter table with the error as its
//! reason, in one transaction with its removal from the outbox, and the relay
//! goes on. Only rows written to the dead-letter table are removed: when it
//! already holds a row's id, the row stays pending, a
//! [`DeadLetter`](postoffice_core::poller::DeadLetter) request fails with
//! [`Error::NotSetAside`](crate::Error::NotSetAside), and a row found not to
//! decode during a fetch is logged as an error and holds its partition until
//! the old dead letter is purged (tried again every 10 seconds, or at once
//! after [`purge`](SqliteSqlxOutboxPoller::purge)). List, replay and purge dead letters with
//! [`SqliteSqlxOutboxPoller::dead_letters`], [`replay`](SqliteSqlxOutboxPoller::replay)
//! and [`purge`](SqliteSqlxOutboxPoller::purge); choose what a partition does
//! after a dead letter with
//! [`dead_letter_policy`](SqliteSqlxOutboxPollerBuilder::dead_letter_policy).
//!
//! # Bad input
//!
//! The [`Outbox`](postoffice_core::Outbox) front refuses a NUL character in
//! headers or payload with
//! [`PublishError::NulCharacter`](postoffice_core::PublishError::NulCharacter)
//! before the store runs, as for every store, so the same data works on
//! SQLite and Postgres. A failure of the insert is
//! [`PublishError::Store`](postoffice_core::PublishError::Store); the one
//! statement wrote nothing.

mod outbox;
mod poller;
mod schema;
mod wakeup;

pub use outbox::{SqliteSqlxOutbox, SqliteSqlxOutboxBuilder};
pub use poller::{SqliteSqlxOutboxPoller, SqliteSqlxOutboxPollerBuilder};
pub use schema::DEFAULT_TABLE;

/// Options shared by the store and poller builders.
#[derive(Debug, Clone)]
struct Options {
    table: String,
    partitions: u32,
    migrate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            partitions: postoffice_core::DEFAULT_PARTITIONS,
            migrate: true,
        }
    }
}
