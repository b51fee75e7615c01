-- Postoffice outbox for Postgres, schema version 1.
--
-- This file uses the default names. It runs unchanged under `sqlx::migrate!`
-- or any other migration tool and then creates the tables in the first schema
-- of the connection's search_path. `PgSqlxOutbox::try_new` and
-- `PgSqlxOutboxPoller::try_new` run the same file themselves when the tables
-- are missing, with the configured schema and table names put in place of the
-- defaults. Every statement is idempotent.

-- Committed messages waiting for the relay (and, in logical-deletion mode,
-- delivered ones until the retention purge removes them).
create table if not exists postoffice_outbox (
    id bigint generated always as identity primary key,
    partition integer not null check (partition >= 0),
    partition_key bytea not null,
    headers jsonb not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    attempts integer not null default 0,
    next_attempt_at timestamptz,
    last_error text,
    delivered_at timestamptz
);

-- The relay reads pending rows per partition in id order. The index holds
-- pending rows only, so delivered rows kept by logical deletion add nothing to
-- the cost of a poll.
create index if not exists postoffice_outbox_pending
    on postoffice_outbox (partition, id)
    where delivered_at is null;

-- Delivered rows leave dead entries in the pending index until vacuum removes
-- them, and polls step over those entries, so have autovacuum visit the table
-- after every 10,000 deleted or updated rows whatever its size.
alter table postoffice_outbox set (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000
);

-- The retention purge of logical-deletion mode finds old delivered rows here.
create index if not exists postoffice_outbox_delivered
    on postoffice_outbox (delivered_at)
    where delivered_at is not null;

-- Messages set aside: rows that no longer decode into the relay's types and
-- messages the broker refused for good, with the reason.
create table if not exists postoffice_outbox_dead (
    id bigint primary key,
    partition integer not null,
    partition_key bytea not null,
    headers jsonb not null,
    payload jsonb not null,
    created_at timestamptz not null,
    attempts integer not null,
    reason text not null,
    dead_at timestamptz not null default now()
);
