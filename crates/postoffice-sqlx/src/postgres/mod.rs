//! The Postgres store: [`PgSqlxOutbox`] writes messages inside the caller's
//! transaction, [`PgSqlxOutboxPoller`] reads them back for a
//! [`Producer`](postoffice_core::Producer).
//!
//! # Schema
//!
//! The tables are defined by the SQL files in `migrations/postgres/` (shipped
//! with this crate), written with the default names: table
//! `postoffice_outbox` and dead-letter table `postoffice_outbox_dead`, in the
//! first schema of the search path. There are two ways to create them:
//!
//! - Let the store do it (the default): `try_new`/`build` look for the tables
//!   and, when they are missing, run the files with the configured schema and
//!   table names put in, inside one transaction under an advisory lock. Every
//!   statement is `create … if not exists`, so concurrent starts are safe.
//!   When the tables exist nothing is run, so the application's database user
//!   needs no CREATE privilege once they are there.
//! - Run the files with your own migration tool, for example
//!   `sqlx::migrate!("path/to/migrations/postgres")`, and build the store with
//!   [`migrate(false)`](PgSqlxOutboxBuilder::migrate): it then only checks the
//!   tables and fails with [`Error::Schema`] when they are missing. With
//!   non-default names, replace `postoffice_outbox` in the files yourself.
//!
//! # Partitions
//!
//! The publisher computes [`partition_for`](postoffice_core::partition_for)
//! (CRC-32 of the partition key, modulo the partition count) in Rust and stores
//! it with the row. Publisher and pollers must be built with the same
//! partition count (default [`DEFAULT_PARTITIONS`](postoffice_core::DEFAULT_PARTITIONS));
//! a poller serves only rows whose partition it owns. Several pollers in one
//! process can own disjoint partition sets through
//! [`owned_partitions`](PgSqlxOutboxPollerBuilder::owned_partitions) and run
//! side by side, each with its own producer.
//!
//! # Order
//!
//! Each poll reads, per owned partition, the oldest pending rows that are
//! committed, in id order. Ids come from an identity column, so they follow
//! the order of the inserts, not of the commits: when two transactions publish
//! on the same key at the same time and the one with the higher id commits
//! first, its message can be delivered first, and the other follows as soon as
//! its transaction commits (a late commit is never skipped, because the relay
//! never moves past pending rows). Messages of one transaction, and of
//! transactions that do not overlap, keep their order. Services that need
//! strict order across overlapping transactions on a key must serialize those
//! transactions, for example by locking the row the key names.
//!
//! # Wake-up
//!
//! With [`notify`](PgSqlxOutboxBuilder::notify) on (the default) the publish
//! statement also runs `pg_notify` on the outbox's channel, with an empty
//! payload. Postgres delivers it at commit, so the poller's listener wakes the
//! relay at once; a rolled-back transaction sends nothing. The poll interval
//! stays the fallback. The poller listens on a connection of its own, made
//! with the pool's connect options (`application_name` `postoffice-listener`)
//! but outside the pool; when that connection is lost it logs a warning,
//! connects again with backoff and polls once, since notifications sent
//! meanwhile are lost. It never ends the relay. The cost: Postgres queues notifications in one shared
//! queue and takes a global lock while committing a notifying transaction, so
//! commits of notifying transactions are serialized against each other for
//! that moment. Under heavy concurrent publishing this limits commit
//! throughput; switch notify off on both sides and rely on the poll interval
//! if that matters more than latency.
//!
//! # Deletion modes
//!
//! [`DeletionMode::Physical`] deletes a row once the transport confirmed it.
//! [`DeletionMode::Logical`] sets `delivered_at` instead and keeps the row;
//! polls read through a partial index over pending rows, so their cost does not
//! grow with history. Remove old rows with
//! [`PgSqlxOutboxPoller::purge_delivered`].
//!
//! In both modes a delivered row leaves a dead entry in the pending index until
//! vacuum removes it, and a poll steps over the dead entries at the head of
//! each partition. The schema therefore asks autovacuum to visit the outbox
//! table after every 10,000 deleted or updated rows, whatever its size; keep
//! autovacuum on for it. Vacuum cannot remove entries that a still-open
//! transaction might see, so a long-running transaction anywhere in the
//! database makes polls slower until it ends. With 1,000,000 delivered rows vacuumed away, a poll of
//! 16 partitions reads about as many pages as on a fresh table (a few more
//! index levels per partition); see the test
//! `logical_mode_poll_cost_does_not_grow_with_history`.
//!
//! # Bad input
//!
//! Postgres `jsonb` cannot hold the NUL character. The
//! [`Outbox`](postoffice_core::Outbox) front finds it in the serialized headers
//! or payload and returns
//! [`PublishError::NulCharacter`](postoffice_core::PublishError::NulCharacter)
//! before the store runs anything, so the caller's transaction stays usable and
//! nothing of the call is written. Any failure of the insert itself is
//! [`PublishError::Store`](postoffice_core::PublishError::Store) wrapping
//! [`Error::Database`]; the one statement wrote nothing, and Postgres has
//! aborted the transaction, so roll it back.
//!
//! A stored row whose headers or payload no longer deserialize into the
//! poller's `(H, P)` is moved to the dead-letter table with the serde error as
//! its reason, in the same statement that deletes it from the outbox, and the
//! relay goes on with the rows behind it.

mod dead_letters;
mod listener;
mod outbox;
mod poller;
mod schema;

pub use outbox::{PgSqlxOutbox, PgSqlxOutboxBuilder};
pub use poller::{PgSqlxOutboxPoller, PgSqlxOutboxPollerBuilder};
pub use schema::{DEFAULT_SCHEMA, DEFAULT_TABLE};

pub use crate::deletion::DeletionMode;
pub use crate::error::Error;

/// Options shared by the store and poller builders.
#[derive(Debug, Clone)]
struct Options {
    schema: String,
    table: String,
    partitions: u32,
    notify: bool,
    migrate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            partitions: postoffice_core::DEFAULT_PARTITIONS,
            notify: true,
            migrate: true,
        }
    }
}
