//! Holds back calls that would overtake a failed message with the same key.
//!
//! The producer may have several sends of one partition in flight. When one
//! fails, the producer stops the partition and later sends it again from its
//! oldest pending message, but until it sees the failure it may still call the
//! transport with later messages of the same key. Publishing those would let
//! them reach the broker before the failed one is sent again.
//!
//! So when a message fails, its key is blocked: queued or new messages of that
//! key with a higher id fail too ([`Error::HeldBack`](crate::Error::HeldBack)).
//! The block ends for calls made after the caller has seen the failure (its
//! response future resolved or was dropped); the producer's retry then starts
//! at or below the failed id and passes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use postoffice_core::MessageId;

#[derive(Debug, Default)]
pub(crate) struct Order {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of the next call.
    next_seq: u64,
    blocked: HashMap<Vec<u8>, Block>,
}

#[derive(Debug)]
struct Block {
    /// The lowest failed id whose failure is not yet seen by the caller.
    failed: MessageId,
    /// Set once the caller saw the failure: calls numbered from here on pass.
    seen_at: Option<u64>,
}

impl Order {
    /// Numbers a new call and runs `enqueue` with its number, under the lock
    /// so that calls reach the queue in number order.
    pub(crate) fn admit<T>(&self, enqueue: impl FnOnce(u64) -> T) -> T {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        enqueue(seq)
    }

    /// Records that message `id` with `key` failed.
    pub(crate) fn fail(&self, key: &[u8], id: MessageId) {
        let mut inner = self.lock();
        match inner.blocked.get_mut(key) {
            Some(block) if block.seen_at.is_none() => block.failed = block.failed.min(id),
            // NOTE: a block whose failure was seen only holds back calls made
            // before that; every such call was dequeued before this failure
            // (the queue is FIFO), so it can be replaced.
            _ => {
                inner.blocked.insert(
                    key.to_vec(),
                    Block {
                        failed: id,
                        seen_at: None,
                    },
                );
            }
        }
    }

    /// Records that the caller saw the outcome of a message with `key`.
    pub(crate) fn seen(&self, key: &[u8]) {
        let mut inner = self.lock();
        let next = inner.next_seq;
        if let Some(block) = inner.blocked.get_mut(key) {
            block.seen_at.get_or_insert(next);
        }
    }

    /// Whether call number `seq`, message `id` with `key`, must be held back.
    /// Called by the publisher as it takes calls off the queue in order.
    pub(crate) fn holds_back(&self, key: &[u8], id: MessageId, seq: u64) -> bool {
        let mut inner = self.lock();
        if inner.blocked.is_empty() {
            return false;
        }
        // Calls are taken in sequence order: blocks seen before `seq` hold
        // back nothing that is still queued.
        inner
            .blocked
            .retain(|_, block| block.seen_at.is_none_or(|seen| seen > seq));
        inner
            .blocked
            .get(key)
            .is_some_and(|block| id > block.failed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_messages_of_a_failed_key_wait_until_the_failure_is_seen() {
        let order = Order::default();
        let id = MessageId::new;
        let (s1, s2, s3) = (
            order.admit(|seq| seq),
            order.admit(|seq| seq),
            order.admit(|seq| seq),
        );
        order.fail(b"a", id(1));
        assert!(order.holds_back(b"a", id(2), s2));
        assert!(!order.holds_back(b"b", id(3), s3), "other keys pass");

        let s4 = order.admit(|seq| seq);
        order.seen(b"a");
        let s5 = order.admit(|seq| seq);
        assert!(
            order.holds_back(b"a", id(4), s4),
            "called before the failure was seen"
        );
        assert!(!order.holds_back(b"a", id(1), s5), "the retry passes");
        let s6 = order.admit(|seq| seq);
        assert!(!order.holds_back(b"a", id(2), s6));
        let _ = s1;
    }
}
