//! The records this service queued in librdkafka that have no delivery report
//! yet, so that a retry of one of them waits for it instead of queueing a copy.
//!
//! librdkafka runs with `message.timeout.ms=0` and never gives up on a record
//! by itself, while the service fails a send after its own message timeout. A
//! retry of that message would otherwise queue another copy each time, and
//! every copy would be delivered once the broker or the topic came back.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{Map, Shared};
use postoffice_core::MessageId;
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;

use crate::Delivered;

/// What a delivery report said, in a form every waiter can clone.
pub(crate) type Report = Result<Delivered, Failure>;

/// A delivery report that carried no delivery.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// librdkafka reported an error for the record.
    Kafka(KafkaError),
    /// The producer went away without a report.
    Canceled,
}

/// librdkafka's report, or `Canceled` when the producer went away first.
type RawReport = <DeliveryFuture as Future>::Output;

type ToReport = fn(RawReport) -> Report;

/// One record's delivery report, awaited by every send of that record.
pub(crate) type SharedDelivery = Shared<Map<DeliveryFuture, ToReport>>;

/// Identifies a queued record: the outbox id and a hash of everything that
/// goes into the record (topic, key, headers, body). The hash keeps two
/// different messages with the same id apart, for example from two outboxes
/// sharing one producer, or an id handed out again after a table was reset:
/// a retry attaches only to a record with exactly its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RecordKey {
    id: MessageId,
    fingerprint: u64,
}

impl RecordKey {
    pub(crate) fn new(id: MessageId, fingerprint: u64) -> Self {
        Self { id, fingerprint }
    }
}

/// Hashes the parts of a record, in the order they are given.
#[derive(Default)]
pub(crate) struct Fingerprint(std::hash::DefaultHasher);

impl Fingerprint {
    pub(crate) fn add(&mut self, part: &[u8]) {
        // The length first, so that ("ab", "c") and ("a", "bc") differ.
        part.len().hash(&mut self.0);
        self.0.write(part);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// The records without a delivery report, shared by all clones of a
/// [`Kafka`](crate::Kafka) service.
///
/// An entry is added when a record is queued and removed by a small task as
/// soon as its report arrives, so the map never holds more entries than
/// librdkafka holds records (`queue.buffering.max.messages`).
#[derive(Debug, Default)]
pub(crate) struct Queued {
    records: Mutex<HashMap<RecordKey, SharedDelivery>>,
}

impl Queued {
    /// The delivery of the record `key` if librdkafka still holds it.
    pub(crate) fn get(&self, key: &RecordKey) -> Option<SharedDelivery> {
        self.lock().get(key).cloned()
    }

    /// Starts tracking a record librdkafka just accepted and returns its
    /// delivery for the send that queued it.
    ///
    /// Outside a tokio runtime nothing could remove the entry again, so the
    /// record is not tracked and its retries queue copies as they would
    /// without this map.
    pub(crate) fn track(
        self: &Arc<Self>,
        key: RecordKey,
        delivery: DeliveryFuture,
    ) -> SharedDelivery {
        let delivery = delivery.map(to_report as ToReport).shared();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return delivery;
        };
        self.lock().insert(key, delivery.clone());
        let queued = Arc::clone(self);
        let watched = delivery.clone();
        runtime.spawn(async move {
            let _report = watched.clone().await;
            queued.remove(&key, &watched);
        });
        delivery
    }

    /// How many records are tracked.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Removes `key` if it still maps to `delivery` (a later copy of the same
    /// record may have replaced it).
    fn remove(&self, key: &RecordKey, delivery: &SharedDelivery) {
        let mut records = self.lock();
        if records
            .get(key)
            .is_some_and(|current| current.ptr_eq(delivery))
        {
            records.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordKey, SharedDelivery>> {
        // The map stays consistent whatever panicked while holding the lock.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn to_report(report: RawReport) -> Report {
    match report {
        Ok(Ok(delivery)) => Ok(Delivered {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        // The message copy in the error is dropped here: nobody needs it
        // and it holds the whole payload.
        Ok(Err((error, _message))) => Err(Failure::Kafka(error)),
        Err(_canceled) => Err(Failure::Canceled),
    }
}
