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
//! partition count (default [`DEFAULT_PARTITIONS`](postoffice_core::DEFAULT_PARTITIONS),
//! at most [`MAX_PARTITIONS`](crate::MAX_PARTITIONS));
//! a poller serves only rows whose partition it owns. Several pollers in one
//! process can own disjoint partition sets through
//! [`owned_partitions`](PgSqlxOutboxPollerBuilder::owned_partitions) and run
//! side by side, each with its own producer.
//!
//! The partition count belongs to the outbox: choose it when the outbox is
//! first used and change it only while the outbox is empty (stop the
//! publishers, let the relay drain, then restart everything with the new
//! count). A key's old and new messages would otherwise sit in different
//! partitions, which are sent side by side, so new ones could overtake old
//! ones; and rows in a partition not below a poller's count are never served
//! by it. Both builders therefore refuse with [`Error::PartitionMismatch`] an
//! outbox holding pending rows in a partition not below their count, and a
//! poller looks for such rows again every 10 seconds while it runs and logs a
//! warning the first time it finds some (a publisher with a higher count
//! started after it). A count raised with a backlog whose partitions are all
//! below both counts is not detected.
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
//! The removal of confirmed rows is one statement for the ids the
//! [`Producer`](postoffice_core::Producer) groups, across partitions. When
//! another transaction holds a lock on one of those rows (a `select … for
//! update`, or an `update` in an open session), the statement waits for it,
//! and so does every partition whose confirmed messages are in the group:
//! the relay stalls until that transaction ends. It has no lock timeout on
//! purpose: a timeout would have the producer send every message of the group
//! again each time. Do not lock outbox rows in application transactions; to
//! find such a stall, look in `pg_stat_activity` for a `delete from …outbox`
//! waiting on a `Lock` event and for the session it waits on
//! (`pg_blocking_pids`).
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
//! aborted the transaction, so roll it back: the caller's own writes in that
//! transaction are lost with it.
//!
//! NUL is the only value checked before the insert. JSON that serde accepts
//! but `jsonb` refuses fails the insert in that way and aborts the
//! transaction: a lone UTF-16 surrogate escape in a string (`"\ud800"`, which
//! a `serde_json::value::RawValue` or a custom serializer can produce), or a
//! number beyond the range of Postgres' `numeric`. `jsonb` also normalizes
//! what it stores: duplicate object keys keep the last value, keys are
//! reordered and number text may change. Partition keys are stored as
//! `bytea`; keep them small (a key of hundreds of megabytes fails the insert
//! with an internal allocation error, and brokers refuse large keys anyway).
//!
//! # Rows that do not decode
//!
//! A stored row whose headers or payload no longer deserialize into the
//! poller's `(H, P)`, or one of whose other columns cannot be read (a
//! `next_attempt_at` or `created_at` of `infinity`, which chrono cannot
//! hold), is moved to the dead-letter table with the error as its reason, in
//! the same statement that deletes it from the outbox, and the relay goes on
//! with the rows behind it.
//!
//! A row is deleted from the outbox only if it was written to the dead-letter
//! table. If that table already holds its id (for example after
//! `truncate … restart identity` on the outbox, or after the outbox was
//! made again without the dead-letter table), the row stays pending: a
//! [`DeadLetter`](postoffice_core::poller::DeadLetter) request fails with
//! [`Error::NotSetAside`], so the producer logs it and tries the partition
//! again later, and a row found not to decode during a fetch is logged as an
//! error and holds its partition (nothing behind it is served) while the other
//! partitions go on; the poller tries it again every 10 seconds. Purging the
//! old dead letter with [`PgSqlxOutboxPoller::purge`] frees it at once.

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
