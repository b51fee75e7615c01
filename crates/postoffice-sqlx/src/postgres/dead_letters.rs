//! Listing, replaying and purging dead letters, and finding the partitions
//! that the block policy holds.

use std::sync::Arc;

use postoffice_core::{DeadLetterEntry, MessageId};
use sqlx::{PgPool, Row};

use super::Error;
use super::schema::{Names, sql};

/// The dead-letter statements of one outbox, rendered once.
#[derive(Debug)]
pub(crate) struct DeadQueries {
    list: Arc<str>,
    replay: Arc<str>,
    purge: Arc<str>,
    blocked: Arc<str>,
}

impl DeadQueries {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = names.outbox();
        let dead = names.dead();
        // The identity column is `generated always`, so putting a message back
        // under its own id needs `overriding system value`. The id cannot be
        // taken: it left the outbox when the message was set aside, and
        // identities are never handed out twice.
        let replay = format!(
            "with moved as (delete from {dead} where id = any($1::int8[]) \
             returning id, partition, partition_key, headers, payload, created_at) \
             insert into {outbox} (id, partition, partition_key, headers, payload, created_at) \
             overriding system value \
             select id, partition, partition_key, headers, payload, created_at from moved"
        );
        Self {
            list: format!(
                "select id, partition, partition_key, headers::text, payload::text, attempts, \
                 created_at, reason, dead_at from {dead} order by id limit $1"
            )
            .into(),
            replay: replay.into(),
            purge: format!("delete from {dead} where id = any($1::int8[])").into(),
            blocked: format!(
                "select distinct partition from {dead} where partition = any($1::int4[])"
            )
            .into(),
        }
    }

    /// At most `limit` dead letters, by id.
    pub(crate) async fn list(
        &self,
        pool: &PgPool,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(sql(&self.list))
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetterEntry::new(
                    MessageId::new(row.try_get(0)?),
                    row.try_get(2)?,
                    unsigned(row.try_get(1)?),
                    row.try_get(3)?,
                    row.try_get(4)?,
                    unsigned(row.try_get(5)?),
                    row.try_get(6)?,
                    row.try_get(7)?,
                    row.try_get(8)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Error::from)
    }

    /// Moves dead letters back into the outbox in one statement; returns how
    /// many.
    pub(crate) async fn replay(&self, pool: &PgPool, ids: &[MessageId]) -> Result<u64, Error> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let result = sqlx::query(sql(&self.replay))
            .bind(ids)
            .execute(pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// Deletes dead letters; returns how many.
    pub(crate) async fn purge(&self, pool: &PgPool, ids: &[MessageId]) -> Result<u64, Error> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let result = sqlx::query(sql(&self.purge))
            .bind(ids)
            .execute(pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// The partitions among `partitions` that have dead letters.
    pub(crate) async fn blocked(
        &self,
        pool: &PgPool,
        partitions: &[i32],
    ) -> Result<Vec<i32>, Error> {
        let blocked = sqlx::query_scalar(sql(&self.blocked))
            .bind(partitions)
            .fetch_all(pool)
            .await?;
        Ok(blocked)
    }
}

/// Converts a row's integer to the unsigned type the message model uses.
fn unsigned(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}
