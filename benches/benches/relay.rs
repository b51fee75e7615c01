//! Publish cost, relay throughput and commit-to-send latency of Postoffice on
//! Postgres, each beside a hand-written SQL baseline measured in the same run.
//!
//! ```text
//! cargo bench -p postoffice-benches --bench relay                 # everything
//! cargo bench -p postoffice-benches --bench relay -- publish drain # some groups
//! cargo bench -p postoffice-benches --features amqp,kafka --bench relay -- brokers
//! ```
//!
//! Groups: `publish`, `drain`, `latency`, `partitions`, `modes`, `backlog`,
//! `brokers`. Each scenario runs in its own schema, dropped afterwards.
//! Results print as a table; see BENCHMARKS.md for recorded figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use postoffice::outbox::sqlx::{DeletionMode, PgSqlxOutbox, PgSqlxOutboxPoller};
use postoffice::transport::InMemory;
use postoffice::{
    CancellationToken, Message, Outbox, PartitionKey, Producer, Transport, partition_for,
};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Headers {
    key: u32,
    kind: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.to_be_bytes().to_vec()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    seq: u64,
    customer: String,
    total_cents: i64,
}

type Msg = Message<Headers, Payload>;

const KEYS: u32 = 64;
const PARTITIONS: u32 = 16;
const BASELINE_BATCH: i64 = 1000;

fn message(seq: u64) -> (Headers, Payload) {
    let headers = Headers {
        key: (seq % u64::from(KEYS)) as u32,
        kind: "order_created".into(),
    };
    let payload = Payload {
        seq,
        customer: format!("customer-{seq:08}"),
        total_cents: 1250,
    };
    (headers, payload)
}

fn main() -> anyhow::Result<()> {
    let groups: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |group: &str| groups.is_empty() || groups.iter().any(|g| g == group);
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut options = PgPoolOptions::new().max_connections(24);
        if let Ok(min) = std::env::var("BENCH_AUTO_EXPLAIN") {
            // Plans of statements slower than `min` go to the server log
            // (needs a superuser; for finding what limits a figure).
            options = options.after_connect(move |conn, _| {
                let setup = format!(
                    "load 'auto_explain'; set auto_explain.log_min_duration = '{min}'; \
                     set auto_explain.log_analyze = on; set auto_explain.log_buffers = on"
                );
                Box::pin(async move {
                    sqlx::raw_sql(AssertSqlSafe(setup)).execute(conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await?;
        println!("postgres: {url}");
        if wants("publish") {
            let started = Instant::now();
            publish(&pool).await?;
            eprintln!("publish: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("drain") {
            let started = Instant::now();
            drain(&pool).await?;
            eprintln!("drain: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("latency") {
            let started = Instant::now();
            latency(&pool).await?;
            eprintln!("latency: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("partitions") {
            let started = Instant::now();
            partitions(&pool).await?;
            eprintln!("partitions: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("modes") {
            let started = Instant::now();
            modes(&pool).await?;
            eprintln!("modes: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("backlog") {
            let started = Instant::now();
            backlog(&pool).await?;
            eprintln!("backlog: {:.1} s", started.elapsed().as_secs_f64());
        }
        if wants("brokers") {
            let started = Instant::now();
            brokers::run(&pool).await?;
            eprintln!("brokers: {:.1} s", started.elapsed().as_secs_f64());
        }
        Ok(())
    })
}

/// A fresh schema holding an outbox; dropped by `drop_schema`.
struct Scenario {
    pool: PgPool,
    schema: String,
    outbox: Outbox<PgSqlxOutbox>,
}

impl Scenario {
    async fn new(pool: &PgPool, partitions: u32, notify: bool) -> anyhow::Result<Self> {
        let schema = format!("bench_{:08x}", rand::random::<u32>());
        sqlx::query(AssertSqlSafe(format!("create schema {schema}")))
            .execute(pool)
            .await?;
        let store = PgSqlxOutbox::builder(pool.clone())
            .schema(&schema)
            .partitions(partitions)
            .notify(notify)
            .build()
            .await?;
        Ok(Self {
            pool: pool.clone(),
            schema,
            outbox: Outbox::new(store),
        })
    }

    fn table(&self) -> String {
        format!("{}.postoffice_outbox", self.schema)
    }

    async fn poller(
        &self,
        partitions: u32,
        notify: bool,
        deletion: DeletionMode,
        poll_interval: Duration,
    ) -> anyhow::Result<PgSqlxOutboxPoller<Headers, Payload>> {
        Ok(PgSqlxOutboxPoller::builder(self.pool.clone())
            .schema(&self.schema)
            .partitions(partitions)
            .notify(notify)
            .deletion(deletion)
            .poll_interval(poll_interval)
            .build()
            .await?)
    }

    async fn pending(&self) -> anyhow::Result<i64> {
        let sql = format!(
            "select count(*) from {} where delivered_at is null",
            self.table()
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Publishes through the library: `per_tx` messages per transaction.
    async fn publish_lib(&self, first: u64, count: u64, per_tx: u64) -> anyhow::Result<()> {
        let mut seq = first;
        while seq < first + count {
            let end = (seq + per_tx).min(first + count);
            let mut tx = self.pool.begin().await?;
            self.outbox
                .publish_messages((seq..end).map(message), &mut tx)
                .await?;
            tx.commit().await?;
            seq = end;
        }
        Ok(())
    }

    /// The baseline: the same rows by one hand-written multi-row statement
    /// per transaction, serializing and hashing the same way.
    ///
    /// Each row's text is cast to jsonb as it is read: casting the whole
    /// `text[]` to `jsonb[]` first builds a second array and costs about 50%
    /// more at 10k rows (EXPLAIN ANALYZE: 110 ms against 90 ms).
    async fn publish_raw(&self, first: u64, count: u64, per_tx: u64) -> anyhow::Result<()> {
        let sql = format!(
            "insert into {} (partition, partition_key, headers, payload) \
             select m.p, m.k, m.h::jsonb, m.b::jsonb \
             from unnest($1::int4[], $2::bytea[], $3::text[], $4::text[]) as m(p, k, h, b)",
            self.table()
        );
        let mut seq = first;
        while seq < first + count {
            let end = (seq + per_tx).min(first + count);
            let size = (end - seq) as usize;
            let (mut parts, mut keys, mut heads, mut bodies) = (
                Vec::with_capacity(size),
                Vec::with_capacity(size),
                Vec::with_capacity(size),
                Vec::with_capacity(size),
            );
            for (headers, payload) in (seq..end).map(message) {
                let key = headers.partition_key();
                parts.push(partition_for(&key, PARTITIONS) as i32);
                keys.push(key);
                heads.push(serde_json::to_string(&headers)?);
                bodies.push(serde_json::to_string(&payload)?);
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(parts)
                .bind(keys)
                .bind(heads)
                .bind(bodies)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            seq = end;
        }
        Ok(())
    }

    async fn analyze(&self) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!("analyze {}", self.table())))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Heap and index blocks hit and read, WAL bytes and checkpoints so far,
    /// for `BENCH_DIAG` output.
    async fn diag(&self) -> anyhow::Result<Vec<f64>> {
        let sql = format!(
            "select heap_blks_hit::float8, heap_blks_read::float8, \
             coalesce(idx_blks_hit, 0)::float8, coalesce(idx_blks_read, 0)::float8, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
             (select (checkpoints_timed + checkpoints_req)::float8 from pg_stat_bgwriter) \
             from pg_statio_user_tables where relid = '{}'::regclass",
            self.table()
        );
        let row: (f64, f64, f64, f64, f64, f64) = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?;
        Ok(vec![row.0, row.1, row.2, row.3, row.4, row.5])
    }

    /// Blocks of the outbox table and its indexes found in shared buffers
    /// and read from outside them, so far.
    async fn blocks(&self) -> anyhow::Result<(i64, i64)> {
        let sql = format!(
            "select (coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0))::int8, \
             (coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0))::int8 \
             from pg_statio_user_tables where relid = '{}'::regclass",
            self.table()
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    async fn truncate(&self) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!("truncate {}", self.table())))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn drop_schema(self) -> anyhow::Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "drop schema {} cascade",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn rate(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

async fn publish(pool: &PgPool) -> anyhow::Result<()> {
    println!("\n## publish (msgs/s, median of 6 rounds, the order rotating)");
    println!(
        "| msgs/tx | raw SQL | postoffice, notify off | ratio | postoffice, notify on | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (per_tx, count) in [(1_u64, 1_000_u64), (100, 20_000), (10_000, 50_000)] {
        let quiet = Scenario::new(pool, PARTITIONS, false).await?;
        let loud = Scenario::new(pool, PARTITIONS, true).await?;
        let (mut raw, mut lib, mut lib_notify) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..6 {
            // Each of the three goes first, second and third twice.
            for turn in 0..3 {
                let started = Instant::now();
                match (round + turn) % 3 {
                    0 => {
                        quiet.publish_raw(0, count, per_tx).await?;
                        raw.push(rate(count, started.elapsed()));
                        quiet.truncate().await?;
                    }
                    1 => {
                        quiet.publish_lib(0, count, per_tx).await?;
                        lib.push(rate(count, started.elapsed()));
                        quiet.truncate().await?;
                    }
                    _ => {
                        loud.publish_lib(0, count, per_tx).await?;
                        lib_notify.push(rate(count, started.elapsed()));
                        loud.truncate().await?;
                    }
                }
            }
        }
        let (raw, lib, lib_notify) = (median(raw), median(lib), median(lib_notify));
        println!(
            "| {per_tx} | {raw:.0} | {lib:.0} | {:.2} | {lib_notify:.0} | {:.2} |",
            lib / raw,
            lib_notify / raw
        );
        quiet.drop_schema().await?;
        loud.drop_schema().await?;
    }
    Ok(())
}

/// Relays a backlog of `count` messages to the in-memory transport and
/// returns msgs/s until the last row is gone.
async fn drain_lib(
    scenario: &Scenario,
    count: u64,
    partitions: u32,
    deletion: DeletionMode,
    batch_size: usize,
) -> anyhow::Result<f64> {
    let read_ahead = Some(Duration::from_secs(1));
    drain_with(
        scenario, count, partitions, deletion, batch_size, read_ahead,
    )
    .await
}

/// As [`drain_lib`], with the producer's read-ahead window given.
async fn drain_with(
    scenario: &Scenario,
    count: u64,
    partitions: u32,
    deletion: DeletionMode,
    batch_size: usize,
    read_ahead: Option<Duration>,
) -> anyhow::Result<f64> {
    let poller = scenario
        .poller(partitions, false, deletion, Duration::from_millis(50))
        .await?;
    let received: InMemory<Msg> = InMemory::default();
    let producer = Producer::new(poller, Transport::new(received.clone()))
        .batch_size(batch_size)
        .read_ahead(read_ahead);
    let token = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(producer.run(token.clone()));
    // Counting only: `wait_for` would wake on every message and copy them
    // all at the end, and a `count(*)` reads the whole table.
    while received.len() < count as usize {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while scenario.pending().await? > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    token.cancel();
    relay.await??;
    drop(received.take());
    Ok(rate(count, took))
}

/// The ceiling: a hand-written `DELETE … RETURNING` loop with a fixed batch,
/// decoding each row into the same types.
async fn drain_raw(scenario: &Scenario, count: u64) -> anyhow::Result<f64> {
    let sql = format!(
        "delete from {t} where id = any(array(select id from {t} where delivered_at is null \
         order by id limit $1)) returning id, partition_key, headers::text, payload::text",
        t = scenario.table()
    );
    let started = Instant::now();
    let mut drained = 0_u64;
    loop {
        let rows: Vec<(i64, Vec<u8>, String, String)> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(BASELINE_BATCH)
            .fetch_all(&scenario.pool)
            .await?;
        if rows.is_empty() {
            break;
        }
        for (_, _, headers, payload) in &rows {
            let _: Headers = serde_json::from_str(headers)?;
            let _: Payload = serde_json::from_str(payload)?;
        }
        drained += rows.len() as u64;
    }
    anyhow::ensure!(drained == count, "raw drain saw {drained} of {count}");
    Ok(rate(count, started.elapsed()))
}

/// Empties the outbox, fills it with `count` rows and analyzes it.
///
/// Autovacuum is off on the benchmark server, so without the `truncate` a
/// drain would start behind the dead rows of the drain before it (a poll
/// walked 1M dead index entries, 425k blocks read, 1.4 s), and without the
/// `analyze` the planner takes the table for empty and reads every row of a
/// partition per poll, in the baseline's plan as in the relay's.
async fn fill(scenario: &Scenario, count: u64) -> anyhow::Result<()> {
    scenario.truncate().await?;
    scenario.publish_raw(0, count, 10_000).await?;
    scenario.analyze().await
}

async fn drain(pool: &PgPool) -> anyhow::Result<()> {
    let count = 100_000;
    println!("\n## drain of a {count} backlog to the in-memory transport (msgs/s, median of 3)");
    println!(
        "| raw DELETE … RETURNING loop, {BASELINE_BATCH}/stmt | postoffice, 16 partitions x 64/fetch | ratio | same, read-ahead off | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let scenario = Scenario::new(pool, PARTITIONS, false).await?;
    let (mut raw, mut lib, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        fill(&scenario, count).await?;
        raw.push(drain_raw(&scenario, count).await?);
        fill(&scenario, count).await?;
        lib.push(drain_lib(&scenario, count, PARTITIONS, DeletionMode::Physical, 64).await?);
        fill(&scenario, count).await?;
        plain.push(
            drain_with(
                &scenario,
                count,
                PARTITIONS,
                DeletionMode::Physical,
                64,
                None,
            )
            .await?,
        );
    }
    let (raw, lib, plain) = (median(raw), median(lib), median(plain));
    println!(
        "| {raw:.0} | {lib:.0} | {:.2} | {plain:.0} | {:.2} |",
        lib / raw,
        plain / raw
    );
    scenario.drop_schema().await
}

async fn partitions(pool: &PgPool) -> anyhow::Result<()> {
    let count = 100_000;
    println!("\n## drain of {count} by partition count (msgs/s; 1024 rows per fetch)");
    println!("| partitions | raw DELETE loop | postoffice | ratio |");
    println!("|---:|---:|---:|---:|");
    for parts in [1_u32, 4, 16] {
        let scenario = Scenario::new(pool, parts, false).await?;
        // Through the library, so rows land in this outbox's partitions.
        scenario.publish_lib(0, count, 10_000).await?;
        scenario.analyze().await?;
        let raw = drain_raw(&scenario, count).await?;
        scenario.truncate().await?;
        scenario.publish_lib(0, count, 10_000).await?;
        scenario.analyze().await?;
        let batch = (1024 / parts as usize).max(1);
        let lib = drain_lib(&scenario, count, parts, DeletionMode::Physical, batch).await?;
        println!("| {parts} | {raw:.0} | {lib:.0} | {:.2} |", lib / raw);
        scenario.drop_schema().await?;
    }
    Ok(())
}

async fn modes(pool: &PgPool) -> anyhow::Result<()> {
    let count = 100_000;
    println!("\n## drain of {count} by deletion mode (msgs/s)");
    println!("| physical | logical |");
    println!("|---:|---:|");
    let physical = Scenario::new(pool, PARTITIONS, false).await?;
    fill(&physical, count).await?;
    let p = drain_lib(&physical, count, PARTITIONS, DeletionMode::Physical, 64).await?;
    physical.drop_schema().await?;
    let logical = Scenario::new(pool, PARTITIONS, false).await?;
    fill(&logical, count).await?;
    let l = drain_lib(&logical, count, PARTITIONS, DeletionMode::Logical, 64).await?;
    println!("| {p:.0} | {l:.0} |");

    // A poll with a long delivered history, next to one on an empty table.
    let sql = format!(
        "explain (analyze, buffers, costs off) select id from {t} \
         where partition = 3 and delivered_at is null order by id limit 64",
        t = logical.table()
    );
    logical.publish_raw(0, 10, 10).await?;
    logical.analyze().await?;
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
        .fetch_all(&logical.pool)
        .await?;
    println!("\nplan of one partition's poll with {count} delivered rows kept and 10 pending:");
    for line in plan {
        println!("    {line}");
    }
    logical.drop_schema().await
}

async fn backlog(pool: &PgPool) -> anyhow::Result<()> {
    println!(
        "\n## drain rate by backlog size (msgs/s; blocks per 1000 messages, hit in shared buffers / read from outside)"
    );
    println!("| backlog | raw DELETE loop | blocks | postoffice | blocks | ratio to raw |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let (mut lib_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for count in [100_000_u64, 1_000_000] {
        let scenario = Scenario::new(pool, PARTITIONS, false).await?;
        let per_k = |(hit0, read0): (i64, i64), (hit1, read1): (i64, i64)| {
            let k = count as f64 / 1000.0;
            format!(
                "{:.0} / {:.0}",
                (hit1 - hit0) as f64 / k,
                (read1 - read0) as f64 / k
            )
        };
        let diag = std::env::var_os("BENCH_DIAG").is_some();
        let show = |name: &str, a: Vec<f64>, b: Vec<f64>| {
            if diag {
                let k = count as f64 / 1000.0;
                let d: Vec<String> = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| format!("{:.1}", (y - x) / k))
                    .collect();
                eprintln!(
                    "{name} {count}: per 1000 msgs heap hit/read, idx hit/read, wal bytes, checkpoints: {}",
                    d.join(" ")
                );
            }
        };
        fill(&scenario, count).await?;
        let before = scenario.blocks().await?;
        let d0 = scenario.diag().await?;
        let raw = drain_raw(&scenario, count).await?;
        show("raw", d0, scenario.diag().await?);
        let raw_blocks = per_k(before, scenario.blocks().await?);
        fill(&scenario, count).await?;
        let before = scenario.blocks().await?;
        let d0 = scenario.diag().await?;
        if diag {
            eprintln!("postoffice drain of {count} starts");
        }
        let lib = drain_lib(&scenario, count, PARTITIONS, DeletionMode::Physical, 64).await?;
        show("postoffice", d0, scenario.diag().await?);
        let lib_blocks = per_k(before, scenario.blocks().await?);
        println!(
            "| {count} | {raw:.0} | {raw_blocks} | {lib:.0} | {lib_blocks} | {:.2} |",
            lib / raw
        );
        lib_rates.push(lib);
        raw_rates.push(raw);
        scenario.drop_schema().await?;
    }
    if let ([small, large], [raw_small, raw_large]) = (&lib_rates[..], &raw_rates[..]) {
        println!(
            "1M backlog rate / 100k backlog rate: postoffice {:.2}, raw DELETE loop {:.2}",
            large / small,
            raw_large / raw_small
        );
    }
    Ok(())
}

/// Commit-to-send latency at a steady rate of single-message transactions.
async fn latency(pool: &PgPool) -> anyhow::Result<()> {
    // The most single-message transactions one publisher commits per second.
    let probe = Scenario::new(pool, PARTITIONS, true).await?;
    let started = Instant::now();
    probe.publish_lib(0, 2_000, 1).await?;
    let max_rate = rate(2_000, started.elapsed());
    probe.drop_schema().await?;
    let target = (max_rate / 2.0).max(1.0);

    println!(
        "\n## commit-to-send latency at {target:.0} msgs/s (half the single-publisher maximum {max_rate:.0})"
    );
    println!("| wake-up | p50 ms | p99 ms | max ms | samples |");
    println!("|---|---:|---:|---:|---:|");
    for (name, notify, poll) in [
        ("NOTIFY, 1 s poll fallback", true, Duration::from_secs(1)),
        ("polling every 100 ms", false, Duration::from_millis(100)),
    ] {
        let scenario = Scenario::new(pool, PARTITIONS, notify).await?;
        let poller = scenario
            .poller(PARTITIONS, notify, DeletionMode::Physical, poll)
            .await?;
        let committed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
        let (seen, record) = (Arc::clone(&committed), Arc::clone(&latencies));
        let tap = tower::service_fn(move |message: Msg| {
            let now = Instant::now();
            let commit = seen
                .lock()
                .ok()
                .and_then(|m| m.get(&message.payload.seq).copied());
            if let (Some(commit), Ok(mut record)) = (commit, record.lock()) {
                record.push(now.saturating_duration_since(commit).as_secs_f64() * 1000.0);
            }
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        });
        let token = CancellationToken::new();
        let relay = tokio::spawn(Producer::new(poller, Transport::new(tap)).run(token.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;

        let samples = (target * 5.0) as u64;
        let period = Duration::from_secs_f64(1.0 / target);
        let mut ticker = tokio::time::interval(period);
        for seq in 0..samples {
            ticker.tick().await;
            let mut tx = pool.begin().await?;
            scenario
                .outbox
                .publish_messages([message(seq)], &mut tx)
                .await?;
            // Record just before the commit returns; a send can start before
            // the client sees the commit acknowledged.
            committed
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(seq, Instant::now());
            tx.commit().await?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while latencies.lock().map(|l| l.len() as u64).unwrap_or(0) < samples
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        relay.await?.context("relay")?;
        let mut values = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        values.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            values
                .get(((values.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} |",
            pick(0.5),
            pick(0.99),
            pick(1.0),
            values.len()
        );
        scenario.drop_schema().await?;
    }
    Ok(())
}

#[cfg(any(feature = "amqp", feature = "kafka"))]
mod brokers {
    use super::*;
    use futures_util::StreamExt;
    use postoffice::{JsonLayer, MessageId, Sender};
    use tower::{ServiceBuilder, ServiceExt};

    const COUNT: u64 = 50_000;
    /// Sends of one partition waiting for the broker at once.
    const IN_FLIGHT: usize = 64;

    pub(super) async fn run(pool: &PgPool) -> anyhow::Result<()> {
        println!(
            "\n## drain of a {COUNT} backlog to brokers (msgs/s; 16 partitions x 64/fetch, {IN_FLIGHT} sends in flight per partition, JsonLayer)"
        );
        println!(
            "| broker | broker alone, no database | raw DELETE loop | postoffice | ratio to the lower of the two |"
        );
        println!("|---|---:|---:|---:|---:|");
        #[cfg(feature = "amqp")]
        rabbitmq(pool).await?;
        #[cfg(feature = "kafka")]
        kafka(pool).await?;
        Ok(())
    }

    /// The same messages the backlog holds, built in memory.
    fn messages(count: u64) -> impl Iterator<Item = Msg> {
        (0..count).map(|seq| {
            let (headers, payload) = message(seq);
            let key = headers.partition_key();
            let partition = partition_for(&key, PARTITIONS);
            let id = MessageId::new(i64::try_from(seq).unwrap_or(i64::MAX) + 1);
            Message::new(
                id,
                key,
                partition,
                headers,
                payload,
                0,
                chrono::Utc::now(),
                None,
            )
        })
    }

    /// The broker's own ceiling: every message sent through the same
    /// transport stack as fast as it takes them, no database involved.
    async fn alone<T>(transport: T, count: u64) -> anyhow::Result<f64>
    where
        T: Sender<Headers, Payload>,
    {
        let started = Instant::now();
        let mut sent = 0_u64;
        let mut replies = transport
            .call_all(futures_util::stream::iter(messages(count)))
            .unordered();
        while let Some(reply) = replies.next().await {
            reply.map_err(|e| anyhow::anyhow!("send failed: {}", e.into()))?;
            sent += 1;
        }
        anyhow::ensure!(sent == count, "sent {sent} of {count}");
        Ok(rate(count, started.elapsed()))
    }

    /// Relays a `count` backlog through `transport`; msgs/s until the last
    /// row is gone.
    async fn relay<T>(scenario: &Scenario, count: u64, transport: T) -> anyhow::Result<f64>
    where
        T: Sender<Headers, Payload>,
    {
        let poller = scenario
            .poller(
                PARTITIONS,
                false,
                DeletionMode::Physical,
                Duration::from_millis(50),
            )
            .await?;
        let producer = Producer::new(poller, Transport::new(transport))
            .batch_size(64)
            .in_flight_per_partition(IN_FLIGHT);
        let token = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn(producer.run(token.clone()));
        while scenario.pending().await? > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        token.cancel();
        running.await??;
        Ok(rate(count, took))
    }

    async fn compare<T>(pool: &PgPool, name: &str, transport: T) -> anyhow::Result<()>
    where
        T: Sender<Headers, Payload>,
    {
        let broker = alone(transport.clone(), COUNT).await?;
        let scenario = Scenario::new(pool, PARTITIONS, false).await?;
        fill(&scenario, COUNT).await?;
        let raw = drain_raw(&scenario, COUNT).await?;
        fill(&scenario, COUNT).await?;
        let lib = relay(&scenario, COUNT, transport).await?;
        scenario.drop_schema().await?;
        println!(
            "| {name} | {broker:.0} | {raw:.0} | {lib:.0} | {:.2} |",
            lib / broker.min(raw)
        );
        Ok(())
    }

    #[cfg(feature = "amqp")]
    async fn rabbitmq(pool: &PgPool) -> anyhow::Result<()> {
        use postoffice::transport::RabbitMq;
        use postoffice::transport::amqp::lapin;

        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let queue = format!("postoffice-bench-{:08x}", rand::random::<u32>());
        let connection =
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        // The default exchange routes by queue name.
        let rabbit = RabbitMq::builder(url.clone())
            .routing_key(queue.clone())
            .routing_key_header(None)
            .connect()
            .await?;
        let transport = ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(rabbit);
        let result = compare(pool, "RabbitMQ (persistent, confirms)", transport).await;
        channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
        connection.close(0, "bench done".into()).await?;
        result
    }

    #[cfg(feature = "kafka")]
    async fn kafka(pool: &PgPool) -> anyhow::Result<()> {
        use postoffice::transport::Kafka;
        use postoffice::transport::kafka::rdkafka;
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;

        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let topic = format!("postoffice-bench-{:08x}", rand::random::<u32>());
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let partitions = i32::try_from(PARTITIONS)?;
        let new = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
        for result in admin.create_topics([&new], &options).await? {
            result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
        }
        let kafka = Kafka::builder(brokers).topic(topic.clone()).build()?;
        let transport = ServiceBuilder::new().layer(JsonLayer::new()).service(kafka);
        let result = compare(pool, "Kafka (tansu, idempotent, acks=all)", transport).await;
        admin.delete_topics(&[topic.as_str()], &options).await?;
        result
    }
}

#[cfg(not(any(feature = "amqp", feature = "kafka")))]
mod brokers {
    use super::*;

    pub(super) async fn run(_pool: &PgPool) -> anyhow::Result<()> {
        println!("\n## drain to brokers: build with --features amqp,kafka");
        Ok(())
    }
}
