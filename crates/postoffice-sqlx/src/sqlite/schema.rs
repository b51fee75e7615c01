//! The name of the outbox table, the schema file with that name put in, and
//! the statements the store and the poller run.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row, SqlitePool};

use crate::Error;

/// Outbox table used unless configured otherwise. The dead-letter table is the
/// same name with `_dead` appended.
pub const DEFAULT_TABLE: &str = "postoffice_outbox";

/// The schema files, in the order they are applied. They are the files of
/// `migrations/sqlite/` and use the default names.
///
/// NOTE: files are never edited once released (sqlx checks their checksums),
/// and every statement in them must be idempotent, since `ensure` runs them
/// all whenever a column is missing.
const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_outbox",
    include_str!("../../migrations/sqlite/0001_outbox.sql"),
)];

/// The longest table name accepted.
const MAX_TABLE_LEN: usize = 100;

/// Columns the outbox table must have.
const OUTBOX_COLUMNS: &[&str] = &[
    "id",
    "partition",
    "partition_key",
    "headers",
    "payload",
    "created_at",
    "attempts",
    "next_attempt_at",
    "last_error",
    "delivered_at",
];

/// Columns the dead-letter table must have.
const DEAD_COLUMNS: &[&str] = &[
    "id",
    "partition",
    "partition_key",
    "headers",
    "payload",
    "created_at",
    "attempts",
    "reason",
    "dead_at",
];

/// The current time as the schema stores it (UTC, milliseconds, sortable).
pub(crate) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The validated table name of one outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    table: String,
}

impl Names {
    /// Checks that `table` is a plain lowercase SQL identifier, so that it can
    /// be written into statements in double quotes without escaping.
    pub(crate) fn new(table: &str) -> Result<Self, Error> {
        let mut chars = table.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if first_ok && rest_ok && table.len() <= MAX_TABLE_LEN && !table.starts_with("sqlite_") {
            Ok(Self {
                table: table.to_owned(),
            })
        } else {
            Err(Error::InvalidName {
                kind: "table",
                name: table.to_owned(),
                max: MAX_TABLE_LEN,
            })
        }
    }

    /// The bare table name.
    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    /// `"table"`.
    pub(crate) fn outbox(&self) -> String {
        format!(r#""{}""#, self.table)
    }

    /// `"table_dead"`.
    pub(crate) fn dead(&self) -> String {
        format!(r#""{}_dead""#, self.table)
    }

    /// The text of a schema file with this name in place of the default: every
    /// identifier token that is `postoffice_outbox` or starts with
    /// `postoffice_outbox_` gets the table name instead of that prefix.
    pub(crate) fn render(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut token = String::new();
        for c in sql.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                token.push(c);
                continue;
            }
            match token.strip_prefix(DEFAULT_TABLE) {
                Some(suffix) if suffix.is_empty() || suffix.starts_with('_') => {
                    out.push_str(&format!(r#""{}{suffix}""#, self.table));
                }
                _ => out.push_str(&token),
            }
            token.clear();
            out.push(c);
        }
        out.pop();
        out
    }

    /// Ensures the outbox tables exist: checks them, and when they are missing
    /// or incomplete and `apply` is set, runs the schema files.
    pub(crate) async fn ensure(&self, pool: &SqlitePool, apply: bool) -> Result<(), Error> {
        let missing = self.missing(pool).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if apply {
            self.apply(pool).await?;
        }
        let missing = if apply {
            self.missing(pool).await?
        } else {
            missing
        };
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema {
                table: self.table.clone(),
                missing,
            })
        }
    }

    /// The required columns that the tables lack, as `table.column`.
    async fn missing(&self, pool: &SqlitePool) -> Result<Vec<String>, Error> {
        let dead = format!("{}_dead", self.table);
        let mut missing = Vec::new();
        for (table, wanted) in [(&self.table, OUTBOX_COLUMNS), (&dead, DEAD_COLUMNS)] {
            let rows = sqlx::query("select name from pragma_table_info(?1)")
                .bind(table)
                .fetch_all(pool)
                .await?;
            let present: Vec<String> = rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, sqlx::Error>>()?;
            missing.extend(
                wanted
                    .iter()
                    .filter(|c| !present.iter().any(|p| p == *c))
                    .map(|c| format!("{table}.{c}")),
            );
        }
        Ok(missing)
    }

    /// Runs the schema files in one `BEGIN IMMEDIATE` transaction, which also
    /// serializes concurrent starts (SQLite allows one writer at a time).
    async fn apply(&self, pool: &SqlitePool) -> Result<(), Error> {
        let mut tx = pool.begin_with("begin immediate").await?;
        for (name, sql) in MIGRATIONS {
            tracing::debug!(migration = name, table = %self.table, "applying outbox schema");
            sqlx::raw_sql(AssertSqlSafe(self.render(sql)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Every statement of one outbox, rendered once.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) insert: Arc<str>,
    pub(crate) fetch: Arc<str>,
    pub(crate) fetch_unblocked: Arc<str>,
    pub(crate) delete: Arc<str>,
    pub(crate) mark_delivered: Arc<str>,
    pub(crate) fail: Arc<str>,
    pub(crate) copy_to_dead: Arc<str>,
    pub(crate) left_behind: Arc<str>,
    pub(crate) max_partition: Arc<str>,
    pub(crate) purge: Arc<str>,
    pub(crate) dead_letters: Arc<str>,
    pub(crate) replay: Arc<str>,
    pub(crate) delete_dead: Arc<str>,
}

impl Queries {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = names.outbox();
        let dead = names.dead();
        // One statement for any number of messages: the batch is a JSON array
        // of `[partition, key as hex, headers, payload]`, bound as a single
        // parameter, so SQLite's limit on bound parameters never applies.
        // Rows are inserted in array order, which gives the ids.
        let insert = format!(
            "insert into {outbox} (partition, partition_key, headers, payload) \
             select value ->> 0, unhex(value ->> 1), value ->> 2, value ->> 3 \
             from json_each(?1) order by key"
        );
        // Per owned partition (a JSON array of numbers), its pending rows up
        // to the `limit`-th one: the inner query finds the id of that row on
        // the pending index, the outer one reads the range up to it.
        let fetch_where = |extra: &str| {
            format!(
                "select o.id, o.partition, o.partition_key, o.headers, o.payload, o.attempts, \
                 o.created_at, o.next_attempt_at \
                 from json_each(?1) as p cross join {outbox} as o \
                 where o.partition = p.value and o.delivered_at is null {extra} \
                 and o.id <= coalesce((select i.id from {outbox} as i \
                 where i.partition = p.value and i.delivered_at is null \
                 order by i.id limit 1 offset ?2), 9223372036854775807) \
                 order by o.partition, o.id"
            )
        };
        let fetch = fetch_where("");
        let fetch_unblocked = fetch_where(&format!(
            "and not exists (select 1 from {dead} as d where d.partition = p.value)"
        ));
        let ids = "(select value from json_each(?1))";
        Self {
            insert: insert.into(),
            fetch: fetch.into(),
            fetch_unblocked: fetch_unblocked.into(),
            delete: format!("delete from {outbox} where id in {ids}").into(),
            mark_delivered: format!(
                "update {outbox} set delivered_at = {NOW} \
                 where id in {ids} and delivered_at is null"
            )
            .into(),
            fail: format!(
                "update {outbox} set attempts = attempts + 1, next_attempt_at = ?2, \
                 last_error = ?3 where id = ?1"
            )
            .into(),
            // `?1` is a JSON array of `[id, reason]`; returns the ids written,
            // which leaves out those the dead-letter table already holds.
            copy_to_dead: format!(
                "insert or ignore into {dead} (id, partition, partition_key, headers, payload, \
                 created_at, attempts, reason) \
                 select o.id, o.partition, o.partition_key, o.headers, o.payload, o.created_at, \
                 o.attempts, r.value ->> 1 from json_each(?1) as r \
                 join {outbox} as o on o.id = r.value ->> 0 returning id"
            )
            .into(),
            // The rows of `[id, reason]` pairs still in the outbox.
            left_behind: format!(
                "select id from {outbox} where id in (select value ->> 0 from json_each(?1))"
            )
            .into(),
            max_partition: format!(
                "select max(partition) from {outbox} where delivered_at is null"
            )
            .into(),
            purge: format!(
                "delete from {outbox} where id in (select id from {outbox} \
                 where delivered_at is not null \
                 and delivered_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
                 order by delivered_at limit ?2)"
            )
            .into(),
            dead_letters: format!(
                "select id, partition, partition_key, headers, payload, attempts, created_at, \
                 reason, dead_at from {dead} order by id limit ?1"
            )
            .into(),
            replay: format!(
                "insert into {outbox} (id, partition, partition_key, headers, payload, \
                 created_at, attempts) \
                 select id, partition, partition_key, headers, payload, created_at, 0 \
                 from {dead} where id in {ids}"
            )
            .into(),
            delete_dead: format!("delete from {dead} where id in {ids}").into(),
        }
    }
}

/// The highest partition of the pending rows, if any.
pub(crate) async fn max_partition(
    pool: &SqlitePool,
    queries: &Queries,
) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(sql(&queries.max_partition))
        .fetch_one(pool)
        .await?)
}

/// A rendered statement, ready for `sqlx::query`.
pub(crate) fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    // NOTE: statements only hold names checked by `Names::new`.
    AssertSqlSafe(Arc::clone(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Names::new("postoffice_outbox").is_ok());
        assert!(Names::new("_x9").is_ok());
        for table in ["", "9t", "T", "t\"; drop table x; --", "t-1", "sqlite_x"] {
            assert!(
                matches!(Names::new(table), Err(Error::InvalidName { .. })),
                "{table} accepted"
            );
        }
        assert!(Names::new(&"t".repeat(MAX_TABLE_LEN + 1)).is_err());
    }

    #[test]
    fn render_puts_the_name_in() {
        let names = Names::new("events").unwrap_or_else(|_| unreachable!());
        let sql = "create table if not exists postoffice_outbox (x int);\n\
                   create index if not exists postoffice_outbox_pending on postoffice_outbox (x);\n\
                   insert into postoffice_outbox_dead select * from postoffice_outboxes;";
        assert_eq!(
            names.render(sql),
            "create table if not exists \"events\" (x int);\n\
             create index if not exists \"events_pending\" on \"events\" (x);\n\
             insert into \"events_dead\" select * from postoffice_outboxes;"
        );
    }
}
