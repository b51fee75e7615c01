//! An outbox kept in memory, with the same publish and poll behaviour as the
//! database stores, for tests and small services that need no durability.
//!
//! ```
//! use std::time::Duration;
//! use postoffice_core::{Outbox, PartitionKey, Producer, Transport};
//! use postoffice_core::{memory::InMemoryOutbox, transport::InMemory};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! struct Headers { key: String }
//! impl PartitionKey for Headers {
//!     fn partition_key(&self) -> Vec<u8> { self.key.clone().into_bytes() }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryOutbox::default();
//! let outbox = Outbox::new(store.clone());
//!
//! let mut tx = store.begin();
//! outbox.publish(Headers { key: "a".into() }, 1_u32, &mut tx).await?;
//! tx.commit();
//!
//! let received = InMemory::default();
//! let producer = Producer::new(store.poller::<Headers, u32>(), Transport::new(received.clone()));
//! let token = CancellationToken::new();
//! let relay = tokio::spawn(producer.run(token.clone()));
//! let got = received.wait_for(1, Duration::from_secs(5)).await?;
//! assert_eq!(got[0].payload, 1);
//! token.cancel();
//! relay.await??;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tower_service::Service;

use crate::dead_letter::{DeadLetterEntry, DeadLetterPolicy};
use crate::poller::{Complete, DeadLetter, Fail, Fetch, WaitForWork};
use crate::{
    BoxError, DEFAULT_PARTITIONS, DecodeError, Message, MessageId, NewMessage, Publish,
    PublishError, partition_for,
};

/// The in-memory store. Clones share the same messages.
///
/// Publish through [`Outbox`](crate::Outbox) inside an [`InMemoryTransaction`]
/// from [`InMemoryOutbox::begin`]; relay with a poller from
/// [`InMemoryOutbox::poller`].
#[derive(Clone)]
pub struct InMemoryOutbox {
    shared: Arc<Shared>,
}

struct Shared {
    partitions: u32,
    policy: DeadLetterPolicy,
    state: Mutex<State>,
    /// Counts commits; pollers wait for it to change.
    commits: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next_id: i64,
    /// Pending rows per partition, by id.
    pending: Vec<BTreeMap<i64, Row>>,
    /// Partition of every pending id.
    index: HashMap<i64, u32>,
    /// Set-aside messages by id.
    dead: BTreeMap<i64, DeadLetterEntry>,
    delivered: u64,
}

#[derive(Clone)]
struct Row {
    partition_key: Vec<u8>,
    headers: String,
    payload: String,
    attempts: u32,
    created_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl Default for InMemoryOutbox {
    fn default() -> Self {
        Self::with_partitions(DEFAULT_PARTITIONS)
    }
}

impl fmt::Debug for InMemoryOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryOutbox")
            .field("partitions", &self.shared.partitions)
            .field("pending", &self.pending())
            .finish()
    }
}

impl InMemoryOutbox {
    /// An empty outbox with `partitions` partitions (at least one).
    pub fn with_partitions(partitions: u32) -> Self {
        Self::with_options(partitions, DeadLetterPolicy::default())
    }

    /// An empty outbox with `partitions` partitions (at least one) and a
    /// dead-letter policy.
    pub fn with_options(partitions: u32, policy: DeadLetterPolicy) -> Self {
        let partitions = partitions.max(1);
        let state = State {
            next_id: 1,
            pending: (0..partitions).map(|_| BTreeMap::new()).collect(),
            ..State::default()
        };
        Self {
            shared: Arc::new(Shared {
                partitions,
                policy,
                state: Mutex::new(state),
                commits: watch::Sender::new(0),
            }),
        }
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// Starts a transaction; messages published in it become visible at
    /// [`InMemoryTransaction::commit`].
    pub fn begin(&self) -> InMemoryTransaction {
        InMemoryTransaction {
            outbox: self.clone(),
            staged: Vec::new(),
        }
    }

    /// A poller that owns every partition and waits at most 100 ms between polls.
    pub fn poller<H, P>(&self) -> InMemoryPoller<H, P> {
        self.poller_for(0..self.shared.partitions)
    }

    /// A poller that owns only `partitions`; pollers with disjoint sets can run
    /// side by side.
    pub fn poller_for<H, P>(
        &self,
        partitions: impl IntoIterator<Item = u32>,
    ) -> InMemoryPoller<H, P> {
        let owned = partitions
            .into_iter()
            .filter(|p| *p < self.shared.partitions)
            .collect();
        InMemoryPoller {
            outbox: self.clone(),
            owned: Arc::new(owned),
            poll_interval: Duration::from_millis(100),
            seen: Arc::new(AtomicU64::new(0)),
            _types: PhantomData,
        }
    }

    /// How many committed messages wait for delivery.
    pub fn pending(&self) -> usize {
        self.lock().index.len()
    }

    /// How many messages were confirmed and removed.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// The messages set aside, by id.
    pub fn dead_letters(&self) -> Vec<DeadLetterEntry> {
        self.lock().dead.values().cloned().collect()
    }

    /// Puts set-aside messages back in the pending set under their original
    /// ids, so each goes out before the later messages of its partition that
    /// are still pending. Their attempt counts start again from zero. Returns
    /// how many were replayed; unknown ids are ignored.
    pub fn replay(&self, ids: &[MessageId]) -> usize {
        let mut state = self.lock();
        let mut replayed = 0;
        for id in ids {
            let Some(entry) = state.dead.remove(&id.get()) else {
                continue;
            };
            let row = Row {
                partition_key: entry.partition_key,
                headers: entry.headers,
                payload: entry.payload,
                attempts: 0,
                created_at: entry.created_at,
                next_attempt_at: None,
                last_error: None,
            };
            if let Some(rows) = state.pending.get_mut(entry.partition as usize) {
                rows.insert(id.get(), row);
                state.index.insert(id.get(), entry.partition);
                replayed += 1;
            }
        }
        drop(state);
        self.shared.commits.send_modify(|c| *c += 1);
        replayed
    }

    /// Drops set-aside messages for good. Returns how many were dropped.
    pub fn purge(&self, ids: &[MessageId]) -> usize {
        let mut state = self.lock();
        let purged = ids
            .iter()
            .filter(|id| state.dead.remove(&id.get()).is_some())
            .count();
        drop(state);
        self.shared.commits.send_modify(|c| *c += 1);
        purged
    }

    /// Stores a raw row as if it had been committed, bypassing serialization.
    /// Meant for tests of rows that no longer decode.
    pub fn insert_raw(&self, partition_key: &[u8], headers: &str, payload: &str) -> MessageId {
        let message = NewMessage {
            partition_key: partition_key.to_vec(),
            headers: headers.to_owned(),
            payload: payload.to_owned(),
        };
        let ids = self.commit_rows(vec![message]);
        ids.first().copied().unwrap_or(MessageId::new(0))
    }

    fn commit_rows(&self, messages: Vec<NewMessage>) -> Vec<MessageId> {
        if messages.is_empty() {
            return Vec::new();
        }
        let now = Utc::now();
        let mut state = self.lock();
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            let id = state.next_id;
            state.next_id += 1;
            let partition = partition_for(&message.partition_key, self.shared.partitions);
            let row = Row {
                partition_key: message.partition_key,
                headers: message.headers,
                payload: message.payload,
                attempts: 0,
                created_at: now,
                next_attempt_at: None,
                last_error: None,
            };
            if let Some(rows) = state.pending.get_mut(partition as usize) {
                rows.insert(id, row);
                state.index.insert(id, partition);
            }
            ids.push(MessageId::new(id));
        }
        drop(state);
        self.shared.commits.send_modify(|c| *c += 1);
        ids
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A transaction on an [`InMemoryOutbox`]: what is published in it is kept
/// aside until [`commit`](Self::commit); dropping it rolls back.
#[derive(Debug)]
pub struct InMemoryTransaction {
    outbox: InMemoryOutbox,
    staged: Vec<NewMessage>,
}

impl InMemoryTransaction {
    /// Makes the staged messages visible to the relay, in publish order, and
    /// returns their ids.
    pub fn commit(self) -> Vec<MessageId> {
        let Self { outbox, staged } = self;
        outbox.commit_rows(staged)
    }

    /// Discards the staged messages.
    pub fn rollback(self) {}

    /// How many messages wait for commit.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }
}

impl<'t> Service<Publish<'t, InMemoryTransaction>> for InMemoryOutbox {
    type Response = ();
    type Error = PublishError;
    type Future = Ready<Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish<'t, InMemoryTransaction>) -> Self::Future {
        if !Arc::ptr_eq(&self.shared, &request.tx.outbox.shared) {
            let error = "the transaction belongs to another in-memory outbox";
            return ready(Err(PublishError::Store(error.into())));
        }
        request.tx.staged.extend(request.messages);
        ready(Ok(()))
    }
}

/// The relay side of an [`InMemoryOutbox`] for headers `H` and payload `P`.
pub struct InMemoryPoller<H, P> {
    outbox: InMemoryOutbox,
    owned: Arc<Vec<u32>>,
    poll_interval: Duration,
    seen: Arc<AtomicU64>,
    _types: PhantomData<fn() -> (H, P)>,
}

impl<H, P> Clone for InMemoryPoller<H, P> {
    fn clone(&self) -> Self {
        Self {
            outbox: self.outbox.clone(),
            owned: Arc::clone(&self.owned),
            poll_interval: self.poll_interval,
            seen: Arc::clone(&self.seen),
            _types: PhantomData,
        }
    }
}

impl<H, P> fmt::Debug for InMemoryPoller<H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryPoller")
            .field("owned", &self.owned)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl<H, P> InMemoryPoller<H, P> {
    /// Sets the fallback poll interval (default 100 ms).
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// The partitions this poller owns.
    pub fn owned_partitions(&self) -> &[u32] {
        &self.owned
    }
}

fn decode<H: DeserializeOwned, P: DeserializeOwned>(
    id: i64,
    partition: u32,
    row: &Row,
) -> Result<Message<H, P>, DecodeError> {
    let id = MessageId::new(id);
    let headers =
        serde_json::from_str(&row.headers).map_err(|source| DecodeError { id, source })?;
    let payload =
        serde_json::from_str(&row.payload).map_err(|source| DecodeError { id, source })?;
    Ok(Message::new(
        id,
        row.partition_key.clone(),
        partition,
        headers,
        payload,
        row.attempts,
        row.created_at,
        row.next_attempt_at,
    ))
}

impl<H, P> Service<Fetch> for InMemoryPoller<H, P>
where
    H: DeserializeOwned,
    P: DeserializeOwned,
{
    type Response = Vec<Message<H, P>>;
    type Error = BoxError;
    type Future = Ready<Result<Vec<Message<H, P>>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Fetch) -> Self::Future {
        let mut state = self.outbox.lock();
        let mut out = Vec::new();
        let mut undecodable = Vec::new();
        let blocked: Vec<u32> = match self.outbox.shared.policy {
            DeadLetterPolicy::Block => state.dead.values().map(|d| d.partition).collect(),
            _ => Vec::new(),
        };
        for &partition in self.owned.iter() {
            let Some(start) = request.start(partition) else {
                continue;
            };
            if blocked.contains(&partition) {
                continue;
            }
            let Some(rows) = state.pending.get(partition as usize) else {
                continue;
            };
            let from = start.map_or(Bound::Unbounded, |id| Bound::Excluded(id.get()));
            let mut taken = 0;
            for (&id, row) in rows.range((from, Bound::Unbounded)) {
                if taken == request.per_partition {
                    break;
                }
                match decode(id, partition, row) {
                    Ok(message) => {
                        out.push(message);
                        taken += 1;
                    }
                    Err(error) => {
                        undecodable.push((id, partition, error));
                        if self.outbox.shared.policy == DeadLetterPolicy::Block {
                            break;
                        }
                    }
                }
            }
        }
        for (id, partition, error) in undecodable {
            tracing::warn!(message_id = id, partition, %error, "stored message set aside");
            move_to_dead(&mut state, id, crate::error_chain(&error));
        }
        ready(Ok(out))
    }
}

fn move_to_dead(state: &mut State, id: i64, reason: String) {
    let Some(partition) = state.index.remove(&id) else {
        return;
    };
    let Some(row) = state
        .pending
        .get_mut(partition as usize)
        .and_then(|rows| rows.remove(&id))
    else {
        return;
    };
    let entry = DeadLetterEntry::new(
        MessageId::new(id),
        row.partition_key,
        partition,
        row.headers,
        row.payload,
        row.attempts,
        row.created_at,
        reason,
        Utc::now(),
    );
    state.dead.insert(id, entry);
}

macro_rules! ready_service {
    ($request:ty, |$this:ident, $req:ident| $body:block) => {
        impl<H, P> Service<$request> for InMemoryPoller<H, P> {
            type Response = ();
            type Error = BoxError;
            type Future = Ready<Result<(), BoxError>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, $req: $request) -> Self::Future {
                let $this = self;
                $body
                ready(Ok(()))
            }
        }
    };
}

ready_service!(Complete, |this, request| {
    let mut state = this.outbox.lock();
    for id in request.ids {
        let id = id.get();
        if let Some(partition) = state.index.remove(&id) {
            if let Some(rows) = state.pending.get_mut(partition as usize) {
                rows.remove(&id);
            }
            state.delivered += 1;
        }
    }
});

ready_service!(Fail, |this, request| {
    let mut state = this.outbox.lock();
    let id = request.id.get();
    let partition = state.index.get(&id).copied();
    let row = partition
        .and_then(|p| state.pending.get_mut(p as usize))
        .and_then(|rows| rows.get_mut(&id));
    if let Some(row) = row {
        row.attempts += 1;
        row.next_attempt_at = Some(request.next_attempt_at);
        row.last_error = Some(request.error);
    }
});

ready_service!(DeadLetter, |this, request| {
    let mut state = this.outbox.lock();
    move_to_dead(&mut state, request.id.get(), request.reason);
});

impl<H, P> Service<WaitForWork> for InMemoryPoller<H, P> {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: WaitForWork) -> Self::Future {
        let mut commits = self.outbox.shared.commits.subscribe();
        let seen = Arc::clone(&self.seen);
        let wait = request
            .max_wait
            .map_or(self.poll_interval, |max| max.min(self.poll_interval));
        Box::pin(async move {
            let current = *commits.borrow_and_update();
            if seen.swap(current, Ordering::AcqRel) != current {
                return Ok(());
            }
            if let Ok(Ok(())) = tokio::time::timeout(wait, commits.changed()).await {
                seen.store(*commits.borrow_and_update(), Ordering::Release);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn message(key: &str, n: u32) -> NewMessage {
        NewMessage {
            partition_key: key.as_bytes().to_vec(),
            headers: format!(r#"{{"key":"{key}"}}"#),
            payload: n.to_string(),
        }
    }

    #[tokio::test]
    async fn rollback_leaves_nothing_and_commit_publishes_in_order() {
        let store = InMemoryOutbox::with_partitions(4);
        let mut tx = store.begin();
        store
            .clone()
            .oneshot(Publish::new(vec![message("a", 1)], &mut tx))
            .await
            .ok();
        assert_eq!(tx.staged(), 1);
        tx.rollback();
        assert_eq!(store.pending(), 0);

        let mut tx = store.begin();
        let batch = vec![message("a", 1), message("a", 2)];
        store
            .clone()
            .oneshot(Publish::new(batch, &mut tx))
            .await
            .ok();
        assert_eq!(store.pending(), 0, "invisible before commit");
        let ids = tx.commit();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
        let poller = store.poller::<serde_json::Value, u32>();
        let got = poller
            .oneshot(Fetch::new(vec![], 10))
            .await
            .ok()
            .unwrap_or_default();
        let payloads: Vec<u32> = got.iter().map(|m| m.payload).collect();
        assert_eq!(payloads, [1, 2]);
    }
}
