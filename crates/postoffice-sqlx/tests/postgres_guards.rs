//! The Postgres store against states it must not lose messages in: a dead
//! letter whose id is taken, a row with a timestamp chrono cannot hold,
//! publisher and poller with different partition counts, and options that
//! make no sense.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postoffice_core::poller::{DeadLetter, Fetch};
use postoffice_core::{BoxError, MessageId, Outbox, partition_for};
use postoffice_sqlx::{Error, MAX_PARTITIONS, MIN_POLL_INTERVAL, PgSqlxOutbox};
use support::{Msg, TestDb, message};
use tower::ServiceExt;

async fn fetch(
    poller: &postoffice_sqlx::PgSqlxOutboxPoller<support::Headers, support::Payload>,
) -> Vec<Msg> {
    ServiceExt::<Fetch>::oneshot(poller.clone(), Fetch::new(vec![], 100))
        .await
        .unwrap()
}

fn store_error(error: &BoxError) -> &Error {
    error
        .downcast_ref::<Error>()
        .expect("a postoffice_sqlx::Error")
}

/// Writes a dead letter with id `id`, as one left from before the outbox's
/// identity was restarted.
async fn old_dead_letter(db: &TestDb, id: i64) {
    db.execute(&format!(
        "insert into {{d}} (id, partition, partition_key, headers, payload, created_at, \
         attempts, reason) values ({id}, 0, '\\x00', '{{}}', '{{}}', now(), 0, 'older message')"
    ))
    .await;
}

/// Two keys in different partitions of 16.
fn two_keys() -> (&'static str, &'static str) {
    let first = "k";
    let second = ["a", "b", "c", "d", "e"]
        .into_iter()
        .find(|key| partition_for(key.as_bytes(), 16) != partition_for(b"k", 16))
        .unwrap();
    (first, second)
}

#[tokio::test]
async fn a_dead_letter_whose_id_is_taken_stays_pending_and_fails() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("a", 1)], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = db.scalar("select min(id) from {t}").await;
    old_dead_letter(&db, id).await;

    let poller = db.poller().notify(false).build().await.unwrap();
    let request = DeadLetter::new(MessageId::new(id), "refused for good".into());
    let error = ServiceExt::<DeadLetter>::oneshot(poller.clone(), request)
        .await
        .unwrap_err();
    match store_error(&error) {
        Error::NotSetAside { ids } => assert_eq!(ids, &[MessageId::new(id)]),
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(db.rows().await, 1, "the message stays in the outbox");
    assert_eq!(
        db.scalar("select count(*) from {d} where reason = 'older message'")
            .await,
        1,
        "the old dead letter is untouched"
    );
    let pending = fetch(&poller).await;
    assert_eq!(pending.len(), 1, "the message is still served");
    db.close().await;
}

#[tokio::test]
async fn an_undecodable_row_whose_id_is_taken_holds_only_its_partition() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let (stuck_key, other_key) = two_keys();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages(
            [
                message(stuck_key, 1),
                message(stuck_key, 2),
                message(other_key, 1),
                message(other_key, 2),
            ],
            &mut tx,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = db.scalar("select min(id) from {t}").await;
    db.execute(&format!(
        "update {{t}} set payload = '{{\"wrong\": 1}}' where id = {id}"
    ))
    .await;
    old_dead_letter(&db, id).await;

    let poller = db.poller().notify(false).build().await.unwrap();
    let got = fetch(&poller).await;
    let keys: Vec<(&str, u32)> = got
        .iter()
        .map(|m| (m.headers.key.as_str(), m.headers.seq))
        .collect();
    assert_eq!(
        keys,
        [(other_key, 1), (other_key, 2)],
        "the other partition flows, nothing behind the stuck row is served"
    );
    assert_eq!(db.rows().await, 4, "nothing was deleted");
    assert_eq!(
        db.scalar("select count(*) from {d} where reason = 'older message'")
            .await,
        1
    );

    // Dropping the old dead letter frees the row: the next fetch sets it
    // aside and serves the row behind it.
    poller.purge(&[MessageId::new(id)]).await.unwrap();
    let got = fetch(&poller).await;
    let stuck: Vec<u32> = got
        .iter()
        .filter(|m| m.headers.key == stuck_key)
        .map(|m| m.headers.seq)
        .collect();
    assert_eq!(stuck, [2]);
    assert_eq!(
        db.scalar(&format!(
            "select count(*) from {{d}} where id = {id} and reason like '%missing field%'"
        ))
        .await,
        1
    );
    db.close().await;
}

#[tokio::test]
async fn a_row_with_an_unreadable_timestamp_is_set_aside_and_the_rest_flow() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((0..20).map(|n| message(&format!("key{n}"), 0)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.execute("update {t} set next_attempt_at = 'infinity' where id = (select min(id) from {t})")
        .await;

    let poller = db.poller().notify(false).build().await.unwrap();
    let got = fetch(&poller).await;
    assert_eq!(got.len(), 19, "every other row is served");
    assert_eq!(
        db.scalar("select count(*) from {d} where reason like 'column next_attempt_at%'")
            .await,
        1,
        "the row is set aside with the reason"
    );
    assert_eq!(db.rows().await, 19);
    db.close().await;
}

#[tokio::test]
async fn pending_rows_beyond_the_partition_count_are_refused_at_build() {
    let db = TestDb::new().await;
    let wide = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .partitions(32)
        .build()
        .await
        .unwrap();
    let outbox = Outbox::new(wide);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((0..100).map(|n| message(&format!("key{n}"), 0)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let table_max = db.scalar("select max(partition)::int8 from {t}").await;
    assert!(table_max >= 16);

    let error = db.poller().build().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::PartitionMismatch { table_max: max, configured: 16 } if i64::from(max) == table_max
        ),
        "{error:?}"
    );
    let error = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::PartitionMismatch { configured: 16, .. }),
        "{error:?}"
    );
    assert!(db.poller().partitions(32).build().await.is_ok());
    db.close().await;
}

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn rows_beyond_the_partition_count_published_later_are_warned_about() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::new().await;
    let poller = db.poller().notify(false).build().await.unwrap();
    let wide = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .partitions(32)
        .build()
        .await
        .unwrap();
    let outbox = Outbox::new(wide);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((0..100).map(|n| message(&format!("key{n}"), 0)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let served = db
        .scalar("select count(*) from {t} where partition < 16")
        .await;

    let got = fetch(&poller).await;
    assert_eq!(i64::try_from(got.len()).unwrap(), served);
    let logs = captured.text();
    assert!(
        logs.contains("partitions this poller never serves"),
        "logs: {logs}"
    );
    fetch(&poller).await;
    assert_eq!(
        captured.text().matches("never serves").count(),
        1,
        "warned once"
    );
    db.close().await;
}

#[tokio::test]
async fn senseless_options_are_refused_or_raised() {
    let db = TestDb::new().await;
    let poller = db
        .poller()
        .poll_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    assert_eq!(poller.poll_interval(), MIN_POLL_INTERVAL);

    let error = db.poller().owned_partitions([]).build().await.unwrap_err();
    assert!(matches!(error, Error::NoPartitions), "{error:?}");

    let error = db
        .poller()
        .partitions(MAX_PARTITIONS + 1)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooManyPartitions { partitions, max: MAX_PARTITIONS } if partitions == MAX_PARTITIONS + 1),
        "{error:?}"
    );
    let error = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .partitions(u32::MAX)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TooManyPartitions { .. }),
        "{error:?}"
    );
    assert!(db.poller().partitions(MAX_PARTITIONS).build().await.is_ok());
    db.close().await;
}
