//! The SQLite store against states it must not lose messages in: a dead
//! letter whose id is taken, a row with a time that does not parse,
//! publisher and poller with different partition counts, and options that
//! make no sense.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::poller::{DeadLetter, Fetch};
use postoffice_core::{BoxError, Message, MessageId, Outbox, PartitionKey, partition_for};
use postoffice_sqlx::{
    Error, MAX_PARTITIONS, MIN_POLL_INTERVAL, SqliteSqlxOutbox, SqliteSqlxOutboxPoller,
};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, SqlitePool};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Payload {
    text: String,
}

type Msg = Message<Headers, Payload>;
type Poller = SqliteSqlxOutboxPoller<Headers, Payload>;

fn message(key: &str, seq: u32) -> (Headers, Payload) {
    (
        Headers {
            key: key.to_owned(),
            seq,
        },
        Payload {
            text: format!("{key}-{seq}"),
        },
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

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

async fn execute(pool: &SqlitePool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .expect(sql);
}

async fn publish(outbox: &SqliteSqlxOutbox, pool: &SqlitePool, messages: Vec<(Headers, Payload)>) {
    let outbox = Outbox::new(outbox.clone());
    let mut tx = pool.begin().await.unwrap();
    outbox.publish_messages(messages, &mut tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn poller(pool: &SqlitePool) -> Poller {
    SqliteSqlxOutboxPoller::builder(pool.clone())
        .build()
        .await
        .unwrap()
}

async fn fetch(poller: &Poller) -> Vec<Msg> {
    ServiceExt::<Fetch>::oneshot(poller.clone(), Fetch::new(vec![], 100))
        .await
        .unwrap()
}

fn store_error(error: &BoxError) -> &Error {
    error
        .downcast_ref::<Error>()
        .expect("a postoffice_sqlx::Error")
}

/// Writes a dead letter with id `id`, as one left from before the outbox
/// table was made again.
async fn old_dead_letter(pool: &SqlitePool, id: i64) {
    execute(
        pool,
        &format!(
            "insert into postoffice_outbox_dead (id, partition, partition_key, headers, \
             payload, created_at, attempts, reason) \
             values ({id}, 0, x'00', '{{}}', '{{}}', '2020-01-01T00:00:00.000Z', 0, 'older message')"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_dead_letter_whose_id_is_taken_stays_pending_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap();
    publish(&outbox, &pool, vec![message("a", 1)]).await;
    let id = scalar(&pool, "select min(id) from postoffice_outbox").await;
    old_dead_letter(&pool, id).await;

    let poller = poller(&pool).await;
    let request = DeadLetter::new(MessageId::new(id), "refused for good".into());
    let error = ServiceExt::<DeadLetter>::oneshot(poller.clone(), request)
        .await
        .unwrap_err();
    match store_error(&error) {
        Error::NotSetAside { ids } => assert_eq!(ids, &[MessageId::new(id)]),
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        scalar(&pool, "select count(*) from postoffice_outbox").await,
        1
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from postoffice_outbox_dead where reason = 'older message'"
        )
        .await,
        1
    );
    assert_eq!(fetch(&poller).await.len(), 1, "the message is still served");
}

#[tokio::test]
async fn an_undecodable_row_whose_id_is_taken_holds_only_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap();
    let other = ["a", "b", "c", "d", "e"]
        .into_iter()
        .find(|key| partition_for(key.as_bytes(), 16) != partition_for(b"k", 16))
        .unwrap();
    publish(
        &outbox,
        &pool,
        vec![message("k", 1), message("k", 2), message(other, 1)],
    )
    .await;
    let id = scalar(&pool, "select min(id) from postoffice_outbox").await;
    execute(
        &pool,
        &format!("update postoffice_outbox set payload = '{{\"wrong\": 1}}' where id = {id}"),
    )
    .await;
    old_dead_letter(&pool, id).await;

    let poller = poller(&pool).await;
    let got = fetch(&poller).await;
    let keys: Vec<(&str, u32)> = got
        .iter()
        .map(|m| (m.headers.key.as_str(), m.headers.seq))
        .collect();
    assert_eq!(keys, [(other, 1)], "nothing behind the stuck row is served");
    assert_eq!(
        scalar(&pool, "select count(*) from postoffice_outbox").await,
        3
    );

    poller.purge(&[MessageId::new(id)]).await.unwrap();
    let got = fetch(&poller).await;
    assert!(
        got.iter()
            .any(|m| m.headers.key == "k" && m.headers.seq == 2)
    );
    assert_eq!(
        scalar(
            &pool,
            &format!(
                "select count(*) from postoffice_outbox_dead \
                 where id = {id} and reason like '%missing field%'"
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_row_with_an_unreadable_time_is_set_aside_and_the_rest_flow() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let outbox = SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap();
    publish(
        &outbox,
        &pool,
        (0..20).map(|n| message(&format!("key{n}"), 0)).collect(),
    )
    .await;
    execute(
        &pool,
        "update postoffice_outbox set next_attempt_at = 'not a time' \
         where id = (select min(id) from postoffice_outbox)",
    )
    .await;

    let poller = poller(&pool).await;
    assert_eq!(fetch(&poller).await.len(), 19, "every other row is served");
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from postoffice_outbox_dead \
             where reason like 'column next_attempt_at%'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn pending_rows_beyond_the_partition_count_are_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let wide = SqliteSqlxOutbox::builder(pool.clone())
        .partitions(32)
        .build()
        .await
        .unwrap();
    publish(
        &wide,
        &pool,
        (0..100).map(|n| message(&format!("key{n}"), 0)).collect(),
    )
    .await;
    let table_max = scalar(&pool, "select max(partition) from postoffice_outbox").await;
    assert!(table_max >= 16);

    let error = SqliteSqlxOutboxPoller::<Headers, Payload>::builder(pool.clone())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::PartitionMismatch { table_max: max, configured: 16 } if i64::from(max) == table_max
        ),
        "{error:?}"
    );
    let error = SqliteSqlxOutbox::try_new(pool.clone()).await.unwrap_err();
    assert!(
        matches!(error, Error::PartitionMismatch { configured: 16, .. }),
        "{error:?}"
    );
    let wide_poller = SqliteSqlxOutboxPoller::<Headers, Payload>::builder(pool.clone())
        .partitions(32)
        .build()
        .await;
    assert!(wide_poller.is_ok());
}

#[tokio::test]
async fn senseless_options_are_refused_or_raised() {
    let dir = tempfile::tempdir().unwrap();
    let pool = open(&dir).await;
    let builder = || SqliteSqlxOutboxPoller::<Headers, Payload>::builder(pool.clone());
    let poller = builder()
        .poll_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    assert_eq!(poller.poll_interval(), MIN_POLL_INTERVAL);

    let error = builder().owned_partitions([]).build().await.unwrap_err();
    assert!(matches!(error, Error::NoPartitions), "{error:?}");

    let error = builder()
        .partitions(MAX_PARTITIONS + 1)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TooManyPartitions {
                max: MAX_PARTITIONS,
                ..
            }
        ),
        "{error:?}"
    );
    let error = SqliteSqlxOutbox::builder(pool.clone())
        .partitions(u32::MAX)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooManyPartitions { .. }),
        "{error:?}"
    );
}
