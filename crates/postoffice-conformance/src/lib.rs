//! One conformance suite for every Postoffice store.
//!
//! A store takes part by implementing [`Harness`] (a fresh, isolated store per
//! test, and the few operations the suite needs that are not part of the
//! poller requests) and invoking [`conformance_tests!`] in a test file:
//!
//! ```text
//! postoffice_conformance::conformance_tests!(postoffice_conformance::harness::MemoryHarness);
//! ```
//!
//! Every test in [`suite`] then runs against that store, unchanged. Where a
//! store lacks a feature (the in-memory store has no logical deletion), its
//! [`Capabilities`] say so and the test checks that the harness refuses the
//! feature with [`Unsupported`] instead of passing silently.
//!
//! This crate is test support only and is not published.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::poller::Poller;
use postoffice_core::{
    DeadLetterEntry, DeadLetterPolicy, Message, MessageId, PartitionKey, PublishError,
};
use postoffice_sqlx::DeletionMode;
use serde::{Deserialize, Serialize};

pub mod harness;
pub mod suite;

/// Headers of every test message: the key is the partition key, `seq` its
/// position among the key's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// Partition key.
    pub key: String,
    /// Position among the key's messages.
    pub seq: u32,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

/// Payload of every test message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Free text.
    pub text: String,
}

/// A test message as the relay decodes it.
pub type Msg = Message<Headers, Payload>;

/// The message `seq` of `key`.
pub fn message(key: &str, seq: u32) -> (Headers, Payload) {
    (
        Headers {
            key: key.to_owned(),
            seq,
        },
        Payload {
            text: format!("{key}-{seq}"),
        },
    )
}

/// What a store can do beyond the common contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Confirmed rows can be kept with a delivered mark and purged later.
    pub logical_deletion: bool,
    /// Two transactions can publish at the same time (SQLite has one writer).
    pub concurrent_writers: bool,
}

/// The harness refuses an option the store does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported(pub &'static str);

/// Options of the store under test.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Partition count.
    pub partitions: u32,
    /// Dead-letter policy.
    pub policy: DeadLetterPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            partitions: postoffice_core::DEFAULT_PARTITIONS,
            policy: DeadLetterPolicy::MoveOn,
        }
    }
}

/// Options of a poller.
#[derive(Debug, Clone)]
pub struct PollerOptions {
    /// Owned partitions (default: all).
    pub owned: Option<Vec<u32>>,
    /// Deletion mode.
    pub deletion: DeletionMode,
    /// Fallback poll interval.
    pub poll_interval: Duration,
}

impl Default for PollerOptions {
    fn default() -> Self {
        Self {
            owned: None,
            deletion: DeletionMode::Physical,
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// A fresh, isolated store for one test.
// NOTE: the suite awaits these futures in place, so they need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Harness: Sized {
    /// The caller's transaction.
    type Tx;
    /// The store's poller for [`Headers`] and [`Payload`].
    type Poller: Poller<Headers, Payload>;

    /// Creates the store (its own database, schema or memory).
    async fn new(options: StoreOptions) -> Self;
    /// What the store can do.
    fn capabilities(&self) -> Capabilities;
    /// Starts a transaction.
    async fn begin(&self) -> Self::Tx;
    /// Publishes through [`postoffice_core::Outbox`] inside `tx`.
    async fn publish(
        &self,
        tx: &mut Self::Tx,
        batch: Vec<(Headers, Payload)>,
    ) -> Result<(), PublishError>;
    /// Commits `tx`.
    async fn commit(&self, tx: Self::Tx);
    /// Rolls `tx` back.
    async fn rollback(&self, tx: Self::Tx);
    /// A poller with `options`, or why the store cannot offer them.
    async fn poller(&self, options: PollerOptions) -> Result<Self::Poller, Unsupported>;
    /// Committed messages waiting for delivery.
    async fn pending(&self) -> usize;
    /// Rows the store keeps: pending ones and, in logical mode, delivered ones.
    async fn stored(&self) -> usize;
    /// Removes every delivered row kept by logical deletion.
    async fn purge_delivered(&self) -> Result<u64, Unsupported>;
    /// The dead letters, by id.
    async fn dead_letters(&self) -> Vec<DeadLetterEntry>;
    /// Replays dead letters; returns how many.
    async fn replay(&self, ids: &[MessageId]) -> u64;
    /// Drops dead letters; returns how many.
    async fn purge_dead(&self, ids: &[MessageId]) -> u64;
    /// Stores a committed row as is, bypassing serialization.
    async fn insert_raw(&self, key: &[u8], headers: &str, payload: &str);
    /// Drops the store.
    async fn cleanup(self);
}

/// Runs every test of [`suite`] against a [`Harness`]: one `#[tokio::test]`
/// per test, named after it.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::conformance_tests!(@each $harness;
            commit_is_visible_and_rollback_leaves_nothing,
            per_key_order_holds_across_keys,
            a_late_commit_is_not_skipped,
            only_the_confirmed_prefix_is_removed,
            physical_deletion_removes_delivered_rows,
            logical_deletion_keeps_rows_until_purged,
            a_nul_character_is_a_typed_error_and_writes_nothing,
            an_undecodable_row_is_set_aside_and_the_rest_flows,
            shutdown_returns_within_the_grace_and_keeps_unconfirmed_rows,
            replay_puts_a_dead_letter_back_in_order,
            purge_drops_dead_letters,
        );
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::suite::$name::<$harness>().await;
            }
        )*
    };
}
