//! What the relay does with a confirmed message, shared by the sqlx stores.

/// What the relay does with a message once the transport confirmed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeletionMode {
    /// Delete the row.
    #[default]
    Physical,
    /// Keep the row and set its `delivered_at`; old rows are removed by the
    /// poller's `purge_delivered` (for example
    /// `PgSqlxOutboxPoller::purge_delivered` or
    /// `SqliteSqlxOutboxPoller::purge_delivered`).
    Logical,
}
