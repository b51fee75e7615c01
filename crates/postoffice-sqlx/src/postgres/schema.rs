//! Names of the outbox objects, the schema files with those names put in, and
//! the statements the store and the poller run.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, PgPool, Row};

use super::Error;

/// Schema used unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "public";

/// Outbox table used unless configured otherwise. The dead-letter table is the
/// same name with `_dead` appended.
pub const DEFAULT_TABLE: &str = "postoffice_outbox";

/// The schema files, in the order they are applied. They are the files of
/// `migrations/postgres/` and use the default names.
///
/// NOTE: files are never edited once released (sqlx checks their checksums),
/// and every statement in them must be idempotent, since `ensure` runs them
/// all whenever a column is missing.
const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_outbox",
    include_str!("../../migrations/postgres/0001_outbox.sql"),
)];

/// The longest table name accepted: the longest suffix added to it
/// (`_delivered`) must still fit Postgres' 63-byte identifiers.
const MAX_TABLE_LEN: usize = 53;

/// The longest schema name accepted.
const MAX_SCHEMA_LEN: usize = 63;

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

/// Checks that `name` is a plain lowercase SQL identifier, so that it can be
/// written into statements in double quotes without escaping.
fn validate(kind: &'static str, name: &str, max: usize) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= max {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            max,
        })
    }
}

/// The validated names of one outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    schema: String,
    table: String,
}

impl Names {
    /// Validates a schema and table name.
    pub(crate) fn new(schema: &str, table: &str) -> Result<Self, Error> {
        validate("schema", schema, MAX_SCHEMA_LEN)?;
        validate("table", table, MAX_TABLE_LEN)?;
        Ok(Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// `"schema"."table"`.
    pub(crate) fn outbox(&self) -> String {
        format!(r#""{}"."{}""#, self.schema, self.table)
    }

    /// `"schema"."table_dead"`.
    pub(crate) fn dead(&self) -> String {
        format!(r#""{}"."{}_dead""#, self.schema, self.table)
    }

    /// The NOTIFY channel of this outbox: `postoffice:schema.table`, or a hash
    /// of the names when that is longer than Postgres' 63-byte limit.
    pub(crate) fn channel(&self) -> String {
        let channel = format!("postoffice:{}.{}", self.schema, self.table);
        if channel.len() <= 63 {
            channel
        } else {
            format!("postoffice:{:08x}", crc32fast::hash(channel.as_bytes()))
        }
    }

    /// The text of a schema file with these names in place of the defaults.
    ///
    /// Every identifier token that is `postoffice_outbox` or starts with
    /// `postoffice_outbox_` is replaced: the two tables by their qualified
    /// names, any other object (indexes) by the table name plus the same
    /// suffix, unqualified, as `CREATE INDEX` wants it.
    pub(crate) fn render(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut token = String::new();
        for c in sql.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                token.push(c);
                continue;
            }
            out.push_str(&self.rename(&token));
            token.clear();
            out.push(c);
        }
        out.pop();
        out
    }

    fn rename(&self, token: &str) -> String {
        match token.strip_prefix(DEFAULT_TABLE) {
            Some("") => self.outbox(),
            Some("_dead") => self.dead(),
            Some(suffix) if suffix.starts_with('_') => format!(r#""{}{suffix}""#, self.table),
            _ => token.to_owned(),
        }
    }

    /// Ensures the outbox tables exist: checks them, and when they are missing
    /// or incomplete and `apply` is set, runs the schema files.
    pub(crate) async fn ensure(&self, pool: &PgPool, apply: bool) -> Result<(), Error> {
        let missing = self.missing(pool).await?;
        if missing.is_empty() {
            return Ok(());
        }
        if !apply {
            return Err(Error::Schema {
                table: self.outbox(),
                missing,
            });
        }
        self.apply(pool).await?;

        let missing = self.missing(pool).await?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Schema {
                table: self.outbox(),
                missing,
            })
        }
    }

    /// The required columns that the tables lack, as `table.column`.
    async fn missing(&self, pool: &PgPool) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "select table_name::text, column_name::text from information_schema.columns \
             where table_schema::text = $1::text \
             and table_name::text in ($2::text, $2::text || '_dead')",
        )
        .bind(&self.schema)
        .bind(&self.table)
        .fetch_all(pool)
        .await?;
        let present: Vec<(String, String)> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;

        let dead = format!("{}_dead", self.table);
        let wanted = OUTBOX_COLUMNS
            .iter()
            .map(|c| (self.table.as_str(), *c))
            .chain(DEAD_COLUMNS.iter().map(|c| (dead.as_str(), *c)));
        Ok(wanted
            .filter(|(t, c)| !present.iter().any(|(pt, pc)| pt == t && pc == c))
            .map(|(t, c)| format!("{t}.{c}"))
            .collect())
    }

    /// Runs the schema files in one transaction, serialized with other
    /// processes doing the same by a transaction-scoped advisory lock.
    async fn apply(&self, pool: &PgPool) -> Result<(), Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("select pg_advisory_xact_lock(hashtext('postoffice schema'))")
            .execute(&mut *tx)
            .await?;

        // `create schema if not exists` needs the CREATE privilege on the
        // database even when the schema exists, so look first.
        let exists: bool =
            sqlx::query_scalar("select exists (select from pg_namespace where nspname = $1)")
                .bind(&self.schema)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            let create = format!(r#"create schema if not exists "{}""#, self.schema);
            sqlx::raw_sql(AssertSqlSafe(create))
                .execute(&mut *tx)
                .await?;
        }

        for (name, sql) in MIGRATIONS {
            tracing::debug!(migration = name, table = %self.outbox(), "applying outbox schema");
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
    pub(crate) insert_notify: Arc<str>,
    pub(crate) fetch: Arc<str>,
    pub(crate) delete: Arc<str>,
    pub(crate) mark_delivered: Arc<str>,
    pub(crate) fail: Arc<str>,
    pub(crate) dead_letter: Arc<str>,
    pub(crate) purge: Arc<str>,
    pub(crate) max_partition: Arc<str>,
}

impl Queries {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = names.outbox();
        let dead = names.dead();
        let rows = "select m.partition, m.partition_key, m.headers::jsonb, m.payload::jsonb \
             from unnest($1::int4[], $2::bytea[], $3::text[], $4::text[]) with ordinality \
             as m(partition, partition_key, headers, payload, n) order by m.n";
        let insert =
            format!("insert into {outbox} (partition, partition_key, headers, payload) {rows}");
        // A data-modifying CTE runs once whether or not the outer query reads
        // it, so the insert and the notification are one statement.
        let insert_notify = format!("with inserted as ({insert}) select pg_notify($5, '')");
        // One bounded scan of the pending index per partition, starting above
        // the partition's cursor. The bounds are written as a row comparison
        // and a range, and the order as (partition, id), so that only the
        // `(partition, id) where delivered_at is null` index fits: with
        // `partition = p` the planner may walk the primary key instead and
        // filter, reading every other partition's rows (and every dead
        // entry) on the way.
        let fetch = format!(
            "select m.id, m.partition, m.partition_key, m.headers::text, m.payload::text, \
             m.attempts, m.created_at, m.next_attempt_at \
             from unnest($1::int4[], $3::int8[]) as p(partition, after) cross join lateral ( \
             select o.id, o.partition, o.partition_key, o.headers, o.payload, o.attempts, \
             o.created_at, o.next_attempt_at from {outbox} as o \
             where (o.partition, o.id) > (p.partition, p.after) \
             and o.partition <= p.partition and o.delivered_at is null \
             order by o.partition, o.id limit $2) as m"
        );
        // The rows are locked first, so that a row removed meanwhile (for
        // example confirmed by another statement) is left out. Only rows that
        // were written to the dead-letter table are deleted from the outbox;
        // a row whose id the dead-letter table already holds stays pending,
        // and the statement returns its id.
        let dead_letter = format!(
            "with reasons as (select * from unnest($1::int8[], $2::text[]) as r(id, reason)), \
             picked as (select o.id, o.partition, o.partition_key, o.headers, o.payload, \
             o.created_at, o.attempts, r.reason from {outbox} as o \
             join reasons as r on o.id = r.id for update of o), \
             inserted as (insert into {dead} (id, partition, partition_key, headers, payload, \
             created_at, attempts, reason) \
             select id, partition, partition_key, headers, payload, created_at, attempts, reason \
             from picked on conflict (id) do nothing returning id), \
             removed as (delete from {outbox} as o using inserted as i where o.id = i.id \
             returning o.id) \
             select id from picked where id not in (select id from removed)"
        );
        // The highest partition holding a pending row: a backward step on the
        // pending index.
        let max_partition =
            format!("select max(partition)::int8 from {outbox} where delivered_at is null");
        // `= any(array(...))` keeps the bounded inner scan on an index; an
        // `in (subquery)` tends to be planned as a hash join over the table.
        let purge = format!(
            "delete from {outbox} where id = any(array( \
             select id from {outbox} where delivered_at is not null \
             and delivered_at < now() - make_interval(secs => $1) \
             order by delivered_at limit $2))"
        );
        Self {
            insert_notify: insert_notify.into(),
            insert: insert.into(),
            fetch: fetch.into(),
            delete: format!("delete from {outbox} where id = any($1::int8[])").into(),
            mark_delivered: format!(
                "update {outbox} set delivered_at = now() \
                 where id = any($1::int8[]) and delivered_at is null"
            )
            .into(),
            fail: format!(
                "update {outbox} set attempts = attempts + 1, next_attempt_at = $2, \
                 last_error = $3 where id = $1"
            )
            .into(),
            dead_letter: dead_letter.into(),
            purge: purge.into(),
            max_partition: max_partition.into(),
        }
    }
}

/// The highest partition of the pending rows, if any.
pub(crate) async fn max_partition(pool: &PgPool, queries: &Queries) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(sql(&queries.max_partition))
        .fetch_one(pool)
        .await?)
}

/// A rendered statement, ready for `sqlx::query`.
pub(crate) fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    // NOTE: statements only hold names checked by `validate`.
    AssertSqlSafe(Arc::clone(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Names::new("public", "postoffice_outbox").is_ok());
        assert!(Names::new("po_1", "_x9").is_ok());
        for (schema, table) in [
            ("Public", "t"),
            ("public", ""),
            ("public", "9t"),
            ("public", "t\"; drop table x; --"),
            ("public", "t-1"),
            ("", "t"),
        ] {
            assert!(
                matches!(Names::new(schema, table), Err(Error::InvalidName { .. })),
                "{schema}.{table} accepted"
            );
        }
        assert!(Names::new("public", &"t".repeat(MAX_TABLE_LEN)).is_ok());
        assert!(Names::new("public", &"t".repeat(MAX_TABLE_LEN + 1)).is_err());
    }

    #[test]
    fn render_puts_the_names_in() {
        let names = Names::new("app", "events").unwrap_or_else(|_| unreachable!());
        let sql = "create table if not exists postoffice_outbox (x int);\n\
                   create index if not exists postoffice_outbox_pending on postoffice_outbox (x);\n\
                   insert into postoffice_outbox_dead select * from postoffice_outboxes;";
        assert_eq!(
            names.render(sql),
            "create table if not exists \"app\".\"events\" (x int);\n\
             create index if not exists \"events_pending\" on \"app\".\"events\" (x);\n\
             insert into \"app\".\"events_dead\" select * from postoffice_outboxes;"
        );
    }

    #[test]
    fn default_names_render_the_files_qualified() {
        let names = Names::new(DEFAULT_SCHEMA, DEFAULT_TABLE).unwrap_or_else(|_| unreachable!());
        for (_, sql) in MIGRATIONS {
            let rendered = names.render(sql);
            assert!(
                rendered.contains(r#"create table if not exists "public"."postoffice_outbox" ("#)
            );
            assert!(rendered.contains(r#""public"."postoffice_outbox_dead""#));
            assert!(rendered.contains(r#"create index if not exists "postoffice_outbox_pending""#));
        }
    }

    #[test]
    fn long_names_get_a_short_channel() {
        let short = Names::new("public", "postoffice_outbox").unwrap_or_else(|_| unreachable!());
        assert_eq!(short.channel(), "postoffice:public.postoffice_outbox");
        let long = Names::new(&"s".repeat(40), &"t".repeat(40)).unwrap_or_else(|_| unreachable!());
        assert!(long.channel().len() <= 63);
    }
}
