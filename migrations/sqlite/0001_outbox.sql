-- Postoffice outbox for SQLite, schema version 1.
--
-- This file uses the default names. It runs unchanged under `sqlx::migrate!`
-- or any other migration tool. `SqliteSqlxOutbox::try_new` and
-- `SqliteSqlxOutboxPoller::try_new` run the same file themselves when the
-- tables are missing, with the configured table name put in place of the
-- default. Every statement is idempotent.
--
-- Timestamps are TEXT in UTC, `YYYY-MM-DDTHH:MM:SS.SSSZ`, so that they sort
-- as text. Headers and payload are the JSON text the publisher serialized.

-- Committed messages waiting for the relay (and, in logical-deletion mode,
-- delivered ones until the retention purge removes them). AUTOINCREMENT keeps
-- SQLite from ever handing out the id of a deleted row again, so an id names
-- one message for good.
create table if not exists postoffice_outbox (
    id integer primary key autoincrement,
    partition integer not null check (partition >= 0),
    partition_key blob not null,
    headers text not null,
    payload text not null,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts integer not null default 0,
    next_attempt_at text,
    last_error text,
    delivered_at text
);

-- The relay reads pending rows per partition in id order. The index holds
-- pending rows only, so delivered rows kept by logical deletion add nothing to
-- the cost of a poll.
create index if not exists postoffice_outbox_pending
    on postoffice_outbox (partition, id)
    where delivered_at is null;

-- The retention purge of logical-deletion mode finds old delivered rows here.
create index if not exists postoffice_outbox_delivered
    on postoffice_outbox (delivered_at)
    where delivered_at is not null;

-- Messages set aside: rows that no longer decode into the relay's types and
-- messages the broker refused for good, with the reason.
create table if not exists postoffice_outbox_dead (
    id integer primary key,
    partition integer not null,
    partition_key blob not null,
    headers text not null,
    payload text not null,
    created_at text not null,
    attempts integer not null,
    reason text not null,
    dead_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The block dead-letter policy looks up dead letters by partition.
create index if not exists postoffice_outbox_dead_partition
    on postoffice_outbox_dead (partition);
