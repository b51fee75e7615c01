//! The error type shared by the sqlx stores.

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
}
