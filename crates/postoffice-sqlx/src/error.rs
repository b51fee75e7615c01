//! The error type shared by the sqlx stores.

use postoffice_core::MessageId;

/// Why building a store or poller, or an operation on it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("database operation failed")]
    Database(#[from] sqlx::Error),
    /// The outbox tables are missing or lack columns, and creating them was
    /// switched off or did not help.
    #[error("outbox table {table} is missing columns: {}", missing.join(", "))]
    Schema {
        /// The outbox table, qualified.
        table: String,
        /// The missing columns, as `table.column`.
        missing: Vec<String>,
    },
    /// A schema or table name is not a plain lowercase SQL identifier.
    #[error(
        "{kind} name {name:?} is not allowed: use a-z, 0-9 and _, not a digit first, at most {max} bytes"
    )]
    InvalidName {
        /// `"schema"` or `"table"`.
        kind: &'static str,
        /// The refused name.
        name: String,
        /// The longest name allowed.
        max: usize,
    },
    /// A poller was given a partition that is not below the partition count.
    #[error("partition {partition} is out of range for {partitions} partitions")]
    PartitionOutOfRange {
        /// The partition asked for.
        partition: u32,
        /// The partition count.
        partitions: u32,
    },
    /// A poller was given an empty set of partitions to own.
    #[error("a poller must own at least one partition")]
    NoPartitions,
    /// The partition count is above [`MAX_PARTITIONS`](crate::MAX_PARTITIONS).
    #[error("{partitions} partitions is more than the {max} allowed")]
    TooManyPartitions {
        /// The partition count asked for.
        partitions: u32,
        /// The largest count allowed.
        max: u32,
    },
    /// The outbox holds pending messages in a partition that is not below
    /// the configured partition count: the table was filled with another
    /// count. The count is fixed when the outbox is first used; change it
    /// only once the outbox is empty.
    #[error(
        "the outbox holds pending messages in partition {table_max}, \
         not below the configured {configured} partitions"
    )]
    PartitionMismatch {
        /// The highest partition of the pending messages.
        table_max: u32,
        /// The configured partition count.
        configured: u32,
    },
    /// Messages could not be moved to the dead-letter table because it
    /// already holds rows with their ids (for example after the outbox's
    /// identity was restarted); they stay pending in the outbox.
    #[error(
        "messages {} could not be set aside: the dead-letter table already holds their ids",
        join(ids)
    )]
    NotSetAside {
        /// The messages left in the outbox.
        ids: Vec<MessageId>,
    },
}

fn join(ids: &[MessageId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
