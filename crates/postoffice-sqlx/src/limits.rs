//! Bounds on the options shared by the sqlx stores, and the bookkeeping of
//! rows that could not be set aside.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use postoffice_core::MessageId;

use crate::Error;

/// The shortest poll interval a poller accepts; shorter ones, zero included,
/// are raised to it, so that an idle relay never polls in a busy loop.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The largest partition count a store or poller accepts.
///
/// Every Postgres fetch reads each owned partition with its own index probe,
/// so its cost grows with the count: on an empty outbox a fetch of 16
/// partitions takes about half a millisecond on a small test server, one of
/// 4,096 partitions about 10 ms. Use as few partitions as the wanted
/// parallelism of sends needs.
pub const MAX_PARTITIONS: u32 = 4096;

/// How long a row that could not be moved to the dead letters is left alone
/// before a fetch tries again.
const STUCK_RETRY: Duration = Duration::from_secs(10);

/// Checks a partition count against [`MAX_PARTITIONS`].
pub(crate) fn check_partitions(partitions: u32) -> Result<(), Error> {
    if partitions > MAX_PARTITIONS {
        return Err(Error::TooManyPartitions {
            partitions,
            max: MAX_PARTITIONS,
        });
    }
    Ok(())
}

/// The partitions a poller serves, ascending, checked against the count.
pub(crate) fn owned_partitions(
    partitions: u32,
    owned: Option<Vec<u32>>,
) -> Result<Vec<u32>, Error> {
    check_partitions(partitions)?;
    let mut owned = owned.unwrap_or_else(|| (0..partitions).collect());
    owned.sort_unstable();
    owned.dedup();
    if owned.is_empty() {
        return Err(Error::NoPartitions);
    }
    if let Some(&partition) = owned.iter().find(|p| **p >= partitions) {
        return Err(Error::PartitionOutOfRange {
            partition,
            partitions,
        });
    }
    Ok(owned)
}

/// Checks the highest partition of the pending rows against the count.
pub(crate) fn check_stored(table_max: Option<i64>, configured: u32) -> Result<(), Error> {
    match table_max {
        Some(max) if max >= i64::from(configured) => Err(Error::PartitionMismatch {
            table_max: u32::try_from(max).unwrap_or(u32::MAX),
            configured,
        }),
        _ => Ok(()),
    }
}

/// Rows that do not decode and could not be moved to the dead letters (their
/// id is taken there), with the time a fetch may try again.
#[derive(Debug, Default)]
pub(crate) struct Stuck {
    retry_at: Mutex<HashMap<MessageId, Instant>>,
}

impl Stuck {
    /// Whether a fetch should try to set this row aside now.
    pub(crate) fn due(&self, id: MessageId) -> bool {
        let retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        retry_at.get(&id).is_none_or(|at| *at <= Instant::now())
    }

    /// Forgets rows whose dead letters were purged: the next fetch tries
    /// them at once.
    pub(crate) fn forget(&self, ids: &[MessageId]) {
        self.record(ids, &[]);
    }

    /// Records the outcome of one attempt.
    pub(crate) fn record(&self, moved: &[MessageId], stuck: &[MessageId]) {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        for id in moved {
            retry_at.remove(id);
        }
        let at = Instant::now() + STUCK_RETRY;
        for id in stuck {
            retry_at.insert(*id, at);
        }
    }
}

/// Whether a periodic check of the stored partitions is due; see
/// [`PartitionWatch`].
#[derive(Debug)]
pub(crate) struct PartitionWatch {
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    next_check: Instant,
    warned: bool,
}

/// How often a poller looks for pending rows beyond its partition count.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(10);

impl PartitionWatch {
    /// A watch whose first check is at the first fetch.
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(WatchState {
                next_check: Instant::now(),
                warned: false,
            }),
        }
    }

    /// Whether to check now; moves the next check one period on.
    pub(crate) fn due(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state.next_check > now {
            return false;
        }
        state.next_check = now + PARTITION_CHECK_EVERY;
        true
    }

    /// Logs a warning the first time rows beyond the count are seen, and
    /// again after they were gone for a while.
    pub(crate) fn report(&self, table_max: Option<i64>, configured: u32, table: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match check_stored(table_max, configured) {
            Err(error) => {
                if !state.warned {
                    state.warned = true;
                    tracing::warn!(
                        table,
                        partitions = configured,
                        table_max = table_max.unwrap_or_default(),
                        %error,
                        "pending messages in partitions this poller never serves: \
                         the publisher uses another partition count"
                    );
                }
            }
            Ok(()) => state.warned = false,
        }
    }
}
