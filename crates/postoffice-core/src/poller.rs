//! The requests a [`Producer`](crate::Producer) sends to a poller.
//!
//! A poller is a `tower::Service` for each of these request types, all with
//! the error type [`BoxError`], so timeout, retry and tracing layers wrap it
//! like any other service. The [`Poller`] trait names that bundle.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tower_service::Service;

use crate::{BoxError, Message, MessageId};

/// Read pending messages, oldest first in each partition.
///
/// The poller answers with at most `per_partition` messages from each partition
/// it owns that is not in `exclude`, each partition's messages in id order.
/// Rows that no longer decode are moved to the dead letters by the poller and
/// never returned.
///
/// `after` is an optimisation hint that a poller may ignore: for an excluded
/// partition listed there, the poller may serve the partition anyway, but only
/// with messages whose id is above the given one. The
/// [`Producer`](crate::Producer) sets it for partitions whose previous batch is
/// still being sent, to read their next batch early; it drops anything at or
/// below the cursor itself, and it returns to uncursored reads regularly, so
/// that a message that committed late with a lower id is still delivered.
/// A poller that ignores the hint leaves those partitions out, as before.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fetch {
    /// Partitions to leave out (busy or backing off).
    pub exclude: Vec<u32>,
    /// The most messages to return per partition.
    pub per_partition: usize,
    /// Excluded partitions that may be served from above a cursor (a hint; see
    /// the type's docs).
    pub after: BTreeMap<u32, MessageId>,
}

impl Fetch {
    /// Builds a request without cursors.
    pub fn new(exclude: Vec<u32>, per_partition: usize) -> Self {
        Self {
            exclude,
            per_partition,
            after: BTreeMap::new(),
        }
    }

    /// Adds cursors: each listed partition, if it is also excluded, may be
    /// served with messages above the given id only.
    #[must_use]
    pub fn with_after(mut self, after: BTreeMap<u32, MessageId>) -> Self {
        self.after = after;
        self
    }

    /// Where a poller that honours cursors starts reading `partition`:
    /// `Some(None)` from the oldest message, `Some(Some(id))` above `id`, and
    /// `None` not at all.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use postoffice_core::{MessageId, poller::Fetch};
    ///
    /// let fetch = Fetch::new(vec![1, 2], 100)
    ///     .with_after(BTreeMap::from([(2, MessageId::new(41))]));
    /// assert_eq!(fetch.start(0), Some(None));
    /// assert_eq!(fetch.start(1), None);
    /// assert_eq!(fetch.start(2), Some(Some(MessageId::new(41))));
    /// ```
    pub fn start(&self, partition: u32) -> Option<Option<MessageId>> {
        if !self.exclude.contains(&partition) {
            return Some(None);
        }
        self.after.get(&partition).map(|id| Some(*id))
    }
}

/// The transport confirmed these messages: remove them (or mark them
/// delivered in logical-deletion mode). Answered with `()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Complete {
    /// Confirmed message ids.
    pub ids: Vec<MessageId>,
}

impl Complete {
    /// Builds a request.
    pub fn new(ids: Vec<MessageId>) -> Self {
        Self { ids }
    }
}

/// A send failed and will be tried again: count the attempt and keep the time
/// of the next try, so that a restart keeps the backoff. Answered with `()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fail {
    /// The failed message.
    pub id: MessageId,
    /// The failure, rendered with its causes.
    pub error: String,
    /// Not to be sent before this time.
    pub next_attempt_at: DateTime<Utc>,
}

impl Fail {
    /// Builds a request.
    pub fn new(id: MessageId, error: String, next_attempt_at: DateTime<Utc>) -> Self {
        Self {
            id,
            error,
            next_attempt_at,
        }
    }
}

/// Move a message out of the pending set into the dead letters, keeping its
/// reason. Answered with `()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message to set aside.
    pub id: MessageId,
    /// Why it is set aside.
    pub reason: String,
}

impl DeadLetter {
    /// Builds a request.
    pub fn new(id: MessageId, reason: String) -> Self {
        Self { id, reason }
    }
}

/// Wait until new messages may be pending: a publish committed (where the store
/// can tell), the poller's poll interval passed, or `max_wait` passed.
/// Answered with `()`.
///
/// A wake-up that arrives while nobody waits is remembered for the next wait.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitForWork {
    /// Return after this long at the latest, if shorter than the poll interval.
    pub max_wait: Option<Duration>,
}

impl WaitForWork {
    /// Builds a request.
    pub fn new(max_wait: Option<Duration>) -> Self {
        Self { max_wait }
    }
}

/// A store's relay side: every request a [`Producer`](crate::Producer) sends.
///
/// Implemented for every type that is a `Service` for each request, so layers
/// that keep the error type compose in front of a poller.
pub trait Poller<H, P>:
    Clone
    + Send
    + 'static
    + Service<Fetch, Response = Vec<Message<H, P>>, Error = BoxError, Future: Send>
    + Service<Complete, Response = (), Error = BoxError, Future: Send>
    + Service<Fail, Response = (), Error = BoxError, Future: Send>
    + Service<DeadLetter, Response = (), Error = BoxError, Future: Send>
    + Service<WaitForWork, Response = (), Error = BoxError, Future: Send>
{
}

impl<T, H, P> Poller<H, P> for T where
    T: Clone
        + Send
        + 'static
        + Service<Fetch, Response = Vec<Message<H, P>>, Error = BoxError, Future: Send>
        + Service<Complete, Response = (), Error = BoxError, Future: Send>
        + Service<Fail, Response = (), Error = BoxError, Future: Send>
        + Service<DeadLetter, Response = (), Error = BoxError, Future: Send>
        + Service<WaitForWork, Response = (), Error = BoxError, Future: Send>
{
}
