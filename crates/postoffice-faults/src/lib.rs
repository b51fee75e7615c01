//! Fault-injection suite for Postoffice: shared pieces of the scenarios in
//! `tests/` and of the `relay` binary.
//!
//! Every scenario publishes messages over a set of keys, each carrying its
//! key and a per-key sequence number in the payload, injects a fault while
//! the relay delivers them, then reads back what arrived and hands it to
//! [`check`]. The check counts:
//!
//! - **lost**: committed messages that never arrived;
//! - **reordered**: first arrivals that are not the next committed sequence
//!   number of their key (a redelivery may repeat earlier messages, but the
//!   first time each number appears must follow publish order, with no gap);
//! - **duplicates**: arrivals beyond the first of a message;
//! - **unexpected**: arrivals of messages that were never committed, or that
//!   carry a different id than an earlier arrival of the same message.
//!
//! ```
//! use postoffice_faults::{Arrival, Committed, check};
//!
//! let mut committed = Committed::default();
//! committed.add("a", 0);
//! committed.add("a", 1);
//! let arrivals = [
//!     Arrival::new(Some(1), "a", 0),
//!     Arrival::new(Some(1), "a", 0),
//!     Arrival::new(Some(2), "a", 1),
//! ];
//! let report = check("doc", &committed, &arrivals);
//! assert_eq!((report.lost, report.reordered, report.duplicates), (0, 0, 1));
//! ```

pub mod amqp;
pub mod db;
pub mod inject;
pub mod kafka;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use postoffice_core::{Message, PartitionKey};
use serde::{Deserialize, Serialize};

/// Headers of the suite's messages: the partition key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// The partition key.
    pub key: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

/// Payload of the suite's messages: the key again and its sequence number, so
/// a reader needs only the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The partition key.
    pub key: String,
    /// Position of the message among its key's messages, from 0.
    pub seq: u32,
}

/// The name of key number `k`.
pub fn key_name(k: usize) -> String {
    format!("key-{k:02}")
}

/// `total` messages over `keys` keys, interleaved: message `i` has key
/// `i % keys` and sequence number `i / keys`, plus `seq_from`.
pub fn messages(keys: usize, total: usize, seq_from: u32) -> Vec<(Headers, Payload)> {
    let keys = keys.max(1);
    (0..total)
        .map(|i| {
            let key = key_name(i % keys);
            let seq = u32::try_from(i / keys).unwrap_or(u32::MAX) + seq_from;
            (Headers { key: key.clone() }, Payload { key, seq })
        })
        .collect()
}

/// The messages whose transactions committed, per key in publish order.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    by_key: BTreeMap<String, Vec<u32>>,
}

impl Committed {
    /// Records one committed message.
    pub fn add(&mut self, key: &str, seq: u32) {
        self.by_key.entry(key.to_owned()).or_default().push(seq);
    }

    /// Records every message of a committed batch.
    pub fn add_all(&mut self, batch: &[(Headers, Payload)]) {
        for (_, payload) in batch {
            self.add(&payload.key, payload.seq);
        }
    }

    /// Adds what another record holds.
    pub fn extend(&mut self, other: Committed) {
        for (key, seqs) in other.by_key {
            self.by_key.entry(key).or_default().extend(seqs);
        }
    }

    /// Forgets one message (for example one set aside on purpose).
    pub fn remove(&mut self, key: &str, seq: u32) {
        if let Some(seqs) = self.by_key.get_mut(key) {
            seqs.retain(|s| *s != seq);
        }
    }

    /// How many messages committed.
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// Whether nothing committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One message as a reader saw it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The message id the transport carried, when the reader sees one.
    pub id: Option<i64>,
    /// The key from the payload.
    pub key: String,
    /// The sequence number from the payload.
    pub seq: u32,
}

impl Arrival {
    /// An arrival.
    pub fn new(id: Option<i64>, key: &str, seq: u32) -> Self {
        Self {
            id,
            key: key.to_owned(),
            seq,
        }
    }

    /// An arrival read from a JSON body holding a [`Payload`].
    ///
    /// # Errors
    ///
    /// When the body is not such a payload.
    pub fn from_body(id: Option<i64>, body: &[u8]) -> Result<Self, serde_json::Error> {
        let payload: Payload = serde_json::from_slice(body)?;
        Ok(Self {
            id,
            key: payload.key,
            seq: payload.seq,
        })
    }
}

impl<H> From<&Message<H, Payload>> for Arrival {
    fn from(message: &Message<H, Payload>) -> Self {
        Self {
            id: Some(message.id.get()),
            key: message.payload.key.clone(),
            seq: message.payload.seq,
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Messages committed.
    pub committed: usize,
    /// Arrivals read, duplicates included.
    pub delivered: usize,
    /// Committed messages that never arrived.
    pub lost: usize,
    /// First arrivals that broke their key's publish order.
    pub reordered: usize,
    /// Arrivals beyond the first of a message.
    pub duplicates: usize,
    /// Arrivals of uncommitted messages, or with a changed id.
    pub unexpected: usize,
}

impl Report {
    /// Whether nothing was lost, reordered or unexpected.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.reordered == 0 && self.unexpected == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario={} committed={} delivered={} lost={} reordered={} duplicates={}",
            self.scenario,
            self.committed,
            self.delivered,
            self.lost,
            self.reordered,
            self.duplicates
        )?;
        if self.unexpected > 0 {
            write!(f, " unexpected={}", self.unexpected)?;
        }
        Ok(())
    }
}

/// Compares what arrived with what committed; see the crate docs for what is
/// counted.
pub fn check(scenario: &str, committed: &Committed, arrivals: &[Arrival]) -> Report {
    // Per key: the committed sequence numbers in order, and how far the
    // first arrivals got through them.
    let mut expected: HashMap<&str, (&[u32], usize)> = committed
        .by_key
        .iter()
        .map(|(key, seqs)| (key.as_str(), (seqs.as_slice(), 0)))
        .collect();
    let mut first_id: HashMap<(&str, u32), Option<i64>> = HashMap::new();
    let (mut reordered, mut duplicates, mut unexpected) = (0, 0, 0);

    for arrival in arrivals {
        let Some((seqs, next)) = expected.get_mut(arrival.key.as_str()) else {
            unexpected += 1;
            continue;
        };
        let Some(position) = seqs.iter().position(|s| *s == arrival.seq) else {
            unexpected += 1;
            continue;
        };
        if let Some(id) = first_id.get(&(arrival.key.as_str(), arrival.seq)) {
            duplicates += 1;
            if *id != arrival.id {
                unexpected += 1;
            }
            continue;
        }
        first_id.insert((arrival.key.as_str(), arrival.seq), arrival.id);
        if position != *next {
            reordered += 1;
        }
        *next = (*next).max(position + 1);
    }

    Report {
        scenario: scenario.to_owned(),
        committed: committed.len(),
        delivered: arrivals.len(),
        lost: committed.len().saturating_sub(first_id.len()),
        reordered,
        duplicates,
        unexpected,
    }
}

/// Prints the transport's and store's logs when `RUST_LOG` asks for them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A random lowercase name with a prefix, usable as a Postgres identifier,
/// an exchange, a queue or a topic.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(key: &str, seqs: std::ops::Range<u32>) -> Committed {
        let mut committed = Committed::default();
        for seq in seqs {
            committed.add(key, seq);
        }
        committed
    }

    #[test]
    fn a_replay_of_earlier_messages_is_a_duplicate_not_a_reorder() {
        let committed = committed("a", 0..4);
        let arrivals: Vec<Arrival> = [0, 1, 2, 1, 2, 3]
            .iter()
            .map(|seq| Arrival::new(Some(i64::from(*seq)), "a", *seq))
            .collect();
        let report = check("t", &committed, &arrivals);
        assert_eq!(
            (report.lost, report.reordered, report.duplicates),
            (0, 0, 2)
        );
        assert!(report.is_clean());
    }

    #[test]
    fn a_gap_filled_later_is_a_reorder_and_a_missing_message_is_lost() {
        let committed = committed("a", 0..5);
        let arrivals: Vec<Arrival> = [0, 2, 1, 3]
            .iter()
            .map(|seq| Arrival::new(None, "a", *seq))
            .collect();
        let report = check("t", &committed, &arrivals);
        // 2 skipped ahead of 1, and 1 came after 2: both are out of place.
        assert_eq!((report.lost, report.reordered), (1, 2));
        assert!(!report.is_clean());
    }

    #[test]
    fn strangers_and_changed_ids_are_unexpected() {
        let committed = committed("a", 0..1);
        let arrivals = [
            Arrival::new(Some(1), "a", 0),
            Arrival::new(Some(9), "a", 0),
            Arrival::new(Some(2), "b", 0),
            Arrival::new(Some(3), "a", 7),
        ];
        let report = check("t", &committed, &arrivals);
        assert_eq!((report.unexpected, report.duplicates), (3, 1));
    }

    #[test]
    fn messages_interleave_keys() {
        let batch = messages(3, 7, 10);
        let seqs: Vec<(String, u32)> = batch.into_iter().map(|(_, p)| (p.key, p.seq)).collect();
        assert_eq!(seqs[0], ("key-00".to_owned(), 10));
        assert_eq!(seqs[4], ("key-01".to_owned(), 11));
        assert_eq!(seqs[6], ("key-00".to_owned(), 12));
    }

    #[test]
    fn the_report_line_has_every_count() {
        let report = check("x", &committed("a", 0..1), &[Arrival::new(None, "a", 0)]);
        assert_eq!(
            report.to_string(),
            "scenario=x committed=1 delivered=1 lost=0 reordered=0 duplicates=0"
        );
    }
}
