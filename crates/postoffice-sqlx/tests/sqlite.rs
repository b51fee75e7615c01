//! The SQLite store against a real database file per test: wake-up at
//! commit, large batches, connections, schema handling and the poll plan.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use postoffice_core::poller::{Fetch, WaitForWork};
use postoffice_core::transport::InMemory;
use postoffice_core::{CancellationToken, Message, Outbox, PartitionKey, Producer, Transport};
use postoffice_sqlx::{Error, SqliteSqlxOutbox, SqliteSqlxOutboxPoller};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tower::ServiceExt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Headers {
    key: String,
    seq: u32,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

type Msg = Message<Headers, String>;

fn message(key: &str, seq: u32) -> (Headers, String) {
    (
        Headers {
            key: key.to_owned(),
            seq,
        },
        format!("{key}-{seq}"),
    )
}

async fn open(dir: &tempfile::TempDir) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("outbox.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("open SQLite")
}

async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[tokio::test]
async fn a_commit_wakes_the_relay_at_once_and_a_rollback_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = Outbox::new(SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap());
    // A poll interval far longer than the test: only the wake-up can deliver.
    let poller =
        SqliteSqlxOutboxPoller::<Headers, String>::try_new(pool.clone(), Duration::from_secs(3600))
            .await
            .unwrap();

    // A rolled-back publish leaves no wake-up behind.
    let mut tx = pool.begin().await.unwrap();
    outbox
        .publish_messages([message("a", 0)], &mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let started = Instant::now();
    poller
        .clone()
        .oneshot(WaitForWork::new(Some(Duration::from_millis(300))))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the wait ran to its limit: nothing woke it"
    );

    let wait = tokio::spawn(
        poller
            .clone()
            .oneshot(WaitForWork::new(Some(Duration::from_secs(20)))),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!wait.is_finished(), "nothing committed yet");
    let started = Instant::now();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .publish_messages([message("a", 1)], &mut tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wait.is_finished(), "publishing alone wakes nobody");
    tx.commit().await.unwrap();
    wait.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the commit, not by the 20 s limit"
    );

    // The woken poller sees the committed row.
    let fetched: Vec<Msg> = poller.oneshot(Fetch::new(vec![], 10)).await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].headers.seq, 1);
    pool.close().await;
}

#[tokio::test]
async fn publishing_on_a_connection_commits_and_wakes_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = Outbox::new(SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap());
    let poller =
        SqliteSqlxOutboxPoller::<Headers, String>::try_new(pool.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
    let received: InMemory<Msg> = InMemory::default();
    let token = CancellationToken::new();
    let relay =
        tokio::spawn(Producer::new(poller, Transport::new(received.clone())).run(token.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut conn = pool.acquire().await.unwrap();
    outbox
        .publish_messages([message("a", 0), message("b", 0)], &mut *conn)
        .await
        .unwrap();
    drop(conn);
    let got = received
        .wait_for(2, Duration::from_secs(20))
        .await
        .expect("woken by the autocommit");
    token.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(got.len(), 2);
    pool.close().await;
}

#[tokio::test]
async fn ten_thousand_messages_go_in_one_statement_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = Outbox::new(SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap());
    let batch: Vec<_> = (0..10_000)
        .map(|n| message(&format!("k{}", n % 7), n))
        .collect();

    let mut tx = pool.begin().await.unwrap();
    let started = Instant::now();
    outbox.publish_messages(batch, &mut tx).await.unwrap();
    let took = started.elapsed();
    tx.commit().await.unwrap();
    println!("publishing 10,000 messages in one call took {took:?}");

    assert_eq!(
        count(&pool, "select count(*) from postoffice_outbox").await,
        10_000
    );
    let out_of_order = count(
        &pool,
        "select count(*) from postoffice_outbox as a join postoffice_outbox as b \
         on b.id = a.id + 1 where b.headers ->> '$.seq' != a.headers ->> '$.seq' + 1",
    )
    .await;
    assert_eq!(out_of_order, 0, "ids follow the call order");
    let keys_ok = count(
        &pool,
        "select count(*) from postoffice_outbox \
         where cast(partition_key as text) = 'k' || ((headers ->> '$.seq') % 7)",
    )
    .await;
    assert_eq!(keys_ok, 10_000, "partition keys are stored as bytes");
    pool.close().await;
}

#[tokio::test]
async fn the_poll_reads_through_the_pending_index() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap();
    let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "explain query plan select o.id from json_each('[0,1]') as p \
         cross join postoffice_outbox as o \
         where o.partition = p.value and o.delivered_at is null \
         and o.id <= coalesce((select i.id from postoffice_outbox as i \
         where i.partition = p.value and i.delivered_at is null \
         order by i.id limit 1 offset 9), 9223372036854775807) \
         order by o.partition, o.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    println!("{plan:#?}");
    let searches = plan
        .iter()
        .filter(|line| line.contains("postoffice_outbox_pending"))
        .count();
    assert_eq!(searches, 2, "both reads use the pending index: {plan:?}");
    assert!(
        !plan
            .iter()
            .any(|line| line.starts_with("SCAN o") || line.starts_with("SCAN i")),
        "no full scan: {plan:?}"
    );
    pool.close().await;
}

#[tokio::test]
async fn the_migration_file_works_with_sqlx_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    sqlx::migrate!("../../migrations/sqlite")
        .run(&pool)
        .await
        .expect("migrate");
    let outbox = SqliteSqlxOutbox::builder(pool.clone())
        .migrate(false)
        .build()
        .await
        .expect("tables found");
    let mut tx = pool.begin().await.unwrap();
    Outbox::new(outbox)
        .publish_messages([message("a", 0)], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        count(&pool, "select count(*) from postoffice_outbox").await,
        1
    );
    pool.close().await;
}

#[tokio::test]
async fn custom_names_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;

    let missing = SqliteSqlxOutbox::builder(pool.clone())
        .table("events")
        .migrate(false)
        .build()
        .await;
    assert!(matches!(missing, Err(Error::Schema { .. })), "{missing:?}");
    let bad = SqliteSqlxOutbox::builder(pool.clone())
        .table("Events; drop")
        .build()
        .await;
    assert!(matches!(bad, Err(Error::InvalidName { .. })), "{bad:?}");
    let out_of_range = SqliteSqlxOutboxPoller::<Headers, String>::builder(pool.clone())
        .partitions(4)
        .owned_partitions([1, 4])
        .build()
        .await;
    assert!(matches!(
        out_of_range,
        Err(Error::PartitionOutOfRange {
            partition: 4,
            partitions: 4
        })
    ));

    let outbox = SqliteSqlxOutbox::builder(pool.clone())
        .table("events")
        .partitions(4)
        .build()
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    Outbox::new(outbox)
        .publish_messages((0..20).map(|n| message(&format!("k{n}"), n)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "select count(*) from events").await, 20);
    assert_eq!(
        count(&pool, "select count(*) from events where partition >= 4").await,
        0
    );

    // Two pollers on disjoint partitions read everything once between them.
    let mut seen = 0;
    for owned in [vec![0, 1], vec![2, 3]] {
        let poller = SqliteSqlxOutboxPoller::<Headers, String>::builder(pool.clone())
            .table("events")
            .partitions(4)
            .owned_partitions(owned.clone())
            .build()
            .await
            .unwrap();
        let fetched: Vec<Msg> = poller.oneshot(Fetch::new(vec![], 100)).await.unwrap();
        assert!(fetched.iter().all(|m| owned.contains(&m.partition)));
        seen += fetched.len();
    }
    assert_eq!(seen, 20);
    pool.close().await;
}
