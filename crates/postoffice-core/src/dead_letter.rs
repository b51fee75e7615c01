//! Dead letters: messages set aside because they failed for good, and the
//! policy that says what happens to the rest of their partition.

use chrono::{DateTime, Utc};

use crate::MessageId;

/// What a partition does after one of its messages was set aside.
///
/// Chosen per outbox (store); the default is [`MoveOn`](Self::MoveOn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadLetterPolicy {
    /// The partition goes on with its next message. Per-key order holds for
    /// every message that is delivered, but the set-aside message is skipped
    /// until it is replayed (and then arrives after its successors).
    #[default]
    MoveOn,
    /// The partition stops at the set-aside message (strict order) until that
    /// message is replayed or purged. Other partitions go on.
    Block,
}

/// A message set aside, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterEntry {
    /// Id of the message; a replay keeps it.
    pub id: MessageId,
    /// Partition key bytes.
    pub partition_key: Vec<u8>,
    /// The partition the key hashes into.
    pub partition: u32,
    /// Headers as stored (JSON text).
    pub headers: String,
    /// Payload as stored (JSON text).
    pub payload: String,
    /// Failed sends before it was set aside.
    pub attempts: u32,
    /// When the message was published.
    pub created_at: DateTime<Utc>,
    /// Why it was set aside.
    pub reason: String,
    /// When it was set aside.
    pub dead_at: DateTime<Utc>,
}

impl DeadLetterEntry {
    /// Builds an entry; stores use this when they read a dead-letter row.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: MessageId,
        partition_key: Vec<u8>,
        partition: u32,
        headers: String,
        payload: String,
        attempts: u32,
        created_at: DateTime<Utc>,
        reason: String,
        dead_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            partition_key,
            partition,
            headers,
            payload,
            attempts,
            created_at,
            reason,
            dead_at,
        }
    }
}
