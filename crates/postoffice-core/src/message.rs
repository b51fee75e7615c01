//! The message model: ids, partition keys, stored and encoded messages.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Number of partitions an outbox uses unless configured otherwise.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The unique id of a stored message.
///
/// Ids are assigned by the store when the message is written, grow with publish
/// order and are never reused within one outbox. Every transport carries the id to
/// the broker (AMQP `message_id`, a Kafka header, the CloudEvents `id`) so that
/// consumers can drop duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(i64);

impl MessageId {
    /// Wraps a raw id as read from a store.
    pub const fn new(id: i64) -> Self {
        Self(id)
    }

    /// The raw id.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Says which ordered stream a message belongs to.
///
/// Messages with equal keys reach the transport in publish order; messages with
/// different keys may be sent in parallel. Implement it on your headers type:
///
/// ```
/// use postoffice_core::PartitionKey;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Headers {
///     order_id: u64,
///     kind: String,
/// }
///
/// impl PartitionKey for Headers {
///     fn partition_key(&self) -> Vec<u8> {
///         self.order_id.to_be_bytes().to_vec()
///     }
/// }
/// ```
pub trait PartitionKey {
    /// The bytes that identify this message's ordered stream.
    fn partition_key(&self) -> Vec<u8>;
}

/// The partition a key belongs to among `partitions` partitions.
///
/// The hash is CRC-32 (the IEEE 802.3 polynomial, as computed by zlib's
/// `crc32`) of the key bytes, taken modulo the partition count. It is part of
/// the stored format and will not change. A partition count of zero is treated
/// as one.
///
/// ```
/// use postoffice_core::partition_for;
///
/// assert_eq!(partition_for(b"order-1", 16), crc32fast::hash(b"order-1") % 16);
/// assert!(partition_for(b"", 4) < 4);
/// ```
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

/// A message serialized by the [`Outbox`](crate::Outbox) front and handed to a store.
///
/// Stores receive messages in this form so that they need not know the user's
/// header and payload types.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// The bytes of [`PartitionKey::partition_key`].
    pub partition_key: Vec<u8>,
    /// The headers as JSON text.
    pub headers: String,
    /// The payload as JSON text.
    pub payload: String,
}

/// A committed message as read back from a store, decoded into the user's types.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Message<H, P> {
    /// Unique id, assigned at publish time.
    pub id: MessageId,
    /// The bytes of the headers' partition key.
    pub partition_key: Vec<u8>,
    /// The partition the key hashes into.
    pub partition: u32,
    /// User headers.
    pub headers: H,
    /// User payload.
    pub payload: P,
    /// How many sends of this message failed before.
    pub attempts: u32,
    /// When the message was published (the store's clock).
    pub created_at: DateTime<Utc>,
    /// When the last failure asked for the next try, if it failed before.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl<H, P> Message<H, P> {
    /// Builds a message; stores use this when they read a row.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: MessageId,
        partition_key: Vec<u8>,
        partition: u32,
        headers: H,
        payload: P,
        attempts: u32,
        created_at: DateTime<Utc>,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            id,
            partition_key,
            partition,
            headers,
            payload,
            attempts,
            created_at,
            next_attempt_at,
        }
    }

    /// The message's metadata without headers and payload.
    pub fn meta(&self) -> MessageMeta {
        MessageMeta {
            id: self.id,
            partition_key: self.partition_key.clone(),
            partition: self.partition,
            attempts: self.attempts,
            created_at: self.created_at,
        }
    }
}

/// The metadata every encoded message carries along.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageMeta {
    /// Unique id, assigned at publish time.
    pub id: MessageId,
    /// The bytes of the headers' partition key.
    pub partition_key: Vec<u8>,
    /// The partition the key hashes into.
    pub partition: u32,
    /// How many sends of this message failed before.
    pub attempts: u32,
    /// When the message was published.
    pub created_at: DateTime<Utc>,
}

/// A message turned into bytes by an encoding layer such as
/// [`JsonLayer`](crate::JsonLayer); the broker transports take this type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EncodedMessage {
    /// Id, key, partition, attempts and creation time of the source message.
    pub meta: MessageMeta,
    /// The user headers as a JSON value, for routing decisions.
    pub headers: serde_json::Value,
    /// Extra headers the transport sets on the broker message as they are
    /// (for example CloudEvents binary-mode attributes).
    pub attributes: Vec<(String, String)>,
    /// MIME type of `body`.
    pub content_type: String,
    /// The encoded body.
    pub body: Bytes,
}

impl EncodedMessage {
    /// Builds an encoded message with no extra attributes.
    pub fn new(
        meta: MessageMeta,
        headers: serde_json::Value,
        content_type: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            meta,
            headers,
            attributes: Vec::new(),
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// The id of the source message.
    pub fn id(&self) -> MessageId {
        self.meta.id
    }

    /// Header fields that are strings, numbers or booleans, as text pairs.
    ///
    /// Transports put these on the broker message (AMQP header table, Kafka
    /// headers). Nested objects, arrays and nulls are left out; they stay in
    /// [`EncodedMessage::headers`].
    pub fn scalar_headers(&self) -> impl Iterator<Item = (&str, String)> + '_ {
        self.headers
            .as_object()
            .into_iter()
            .flat_map(|map| map.iter())
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((name.as_str(), text))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_stable() {
        // Fixed values: changing the hash would move keys between partitions
        // of existing outboxes.
        assert_eq!(crc32fast::hash(b"order-1"), 0xE0B3_7FEF);
        assert_eq!(partition_for(b"order-1", 16), 0xE0B3_7FEF % 16);
        assert_eq!(partition_for(b"anything", 0), 0);
    }
}
