//! Scenario 4: the Kafka broker is frozen (SIGSTOP) past the transport's
//! message timeout and resumed; then a broker that keeps its data (a tansu of
//! the test's own on SQLite storage) is killed mid-stream and started again
//! on the same storage. Postgres outbox → in-process relay → Kafka.
//!
//! One test runs both in order, so the shared broker is frozen only while
//! nothing else of this binary uses it, and the second part does not compete
//! with the first for the machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::retry::Backoff;
use postoffice_core::{CancellationToken, JsonLayer, Producer, Transport};
use postoffice_faults::db::{self, Db};
use postoffice_faults::process::{SqliteBroker, shared_broker_pid, signal};
use postoffice_faults::{Committed, check, init_tracing, kafka, messages, random_name};
use postoffice_kafka::Kafka;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

/// A relay from the test's schema to `topic` on `brokers`.
struct Relay {
    token: CancellationToken,
    handle: JoinHandle<Result<(), postoffice_core::ProducerError>>,
    kafka: Kafka,
}

impl Relay {
    async fn start(db: &Db, brokers: &str, topic: &str, message_timeout: Duration) -> Self {
        let kafka = Kafka::builder(brokers)
            .topic(topic)
            .message_timeout(message_timeout)
            .set("linger.ms", "5")
            .build()
            .unwrap();
        let pool = db::pool(&random_name("po-relay"), 4).await.unwrap();
        let producer = Producer::new(
            db.poller(pool).build().await.unwrap(),
            Transport::new(
                ServiceBuilder::new()
                    .layer(JsonLayer::new())
                    .service(kafka.clone()),
            ),
        )
        .batch_size(500)
        .in_flight_per_partition(64)
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ));
        let token = CancellationToken::new();
        let handle = tokio::spawn(producer.run(token.clone()));
        Self {
            token,
            handle,
            kafka,
        }
    }

    async fn stop(self) {
        assert!(!self.handle.is_finished(), "the relay kept running");
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
        let _ = self.kafka.flush(Duration::from_secs(10)).await;
    }
}

async fn wait_drained(db: &Db, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = db.rows().await.unwrap();
        if rows == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows} rows still pending after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resumes the broker even when the test fails while it is frozen.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = signal(self.0, "-CONT");
    }
}

/// (a) Freeze the shared broker for twice the message timeout while messages
/// keep coming.
async fn frozen() {
    let pid = shared_broker_pid().unwrap();
    let brokers = kafka::brokers();
    let db = Db::create().await.unwrap();
    let topic = kafka::create_topic(&brokers, "frozen").await.unwrap();
    let relay = Relay::start(&db, &brokers, &topic, Duration::from_secs(3)).await;

    let mut committed = Committed::default();
    committed.extend(db.publish(&messages(10, 1_000, 0), 100).await.unwrap());
    wait_drained(&db, Duration::from_secs(60)).await;

    signal(pid, "-STOP").unwrap();
    let thaw = Thaw(pid);
    committed.extend(db.publish(&messages(10, 1_000, 100), 100).await.unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    committed.extend(db.publish(&messages(10, 1_000, 200), 100).await.unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending_at_thaw = db.rows().await.unwrap();
    drop(thaw);

    committed.extend(db.publish(&messages(10, 1_000, 300), 100).await.unwrap());
    wait_drained(&db, Duration::from_secs(120)).await;
    relay.stop().await;

    let arrivals = kafka::read_back(
        &brokers,
        &topic,
        committed.len(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let report = check("kafka_frozen", &committed, &arrivals);
    println!("{report} ({pending_at_thaw} rows pending when the broker resumed)");
    assert!(pending_at_thaw > 0, "the freeze held messages back");
    assert!(report.is_clean(), "{report}");
    assert_eq!(db.dead_rows().await.unwrap(), 0, "timeouts are retried");
    db.close().await;
}

/// (b) Kill (SIGKILL) a broker of the test's own that stores in SQLite while
/// messages keep coming, start it again on the same directory and port after
/// a while, and read the topic back from the beginning: the records written
/// before the kill must still be there, and the same relay (one `run`
/// throughout) must deliver the rest.
async fn restarted() {
    let mut broker = SqliteBroker::start().await.unwrap();
    let brokers = broker.address();
    let db = Db::create().await.unwrap();
    let topic = kafka::create_topic(&brokers, "restarted").await.unwrap();
    let relay = Relay::start(&db, &brokers, &topic, Duration::from_secs(3)).await;

    // A first batch reaches the broker before anything breaks.
    let mut committed = Committed::default();
    committed.extend(db.publish(&messages(10, 1_000, 0), 100).await.unwrap());
    wait_drained(&db, Duration::from_secs(60)).await;

    // Then a burst of 2,000 in one transaction, followed by 100 every 100 ms
    // for about 6 s. The broker is killed as soon as the relay has confirmed
    // part of the burst (rows start to go), so that sends are in flight; it
    // stays away 4 s (past the transport's 3 s message timeout) and starts
    // again.
    let (burst_tx, burst_rx) = tokio::sync::oneshot::channel();
    let publisher = {
        let db = Db::attach(db.pool.clone(), db.schema.clone());
        tokio::spawn(async move {
            let mut committed = db.publish(&messages(10, 2_000, 100), 2_000).await?;
            let _ = burst_tx.send(());
            for round in 0..60 {
                let batch = messages(10, 100, 300 + round * 10);
                committed.extend(db.publish(&batch, 50).await?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(committed)
        })
    };
    burst_rx.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pending_at_kill = loop {
        let rows = db.rows().await.unwrap();
        if rows < 1_900 {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay confirmed none of the burst in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let in_flight_at_kill = relay.kafka.pending();
    broker.stop("-KILL").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pending_at_restart = db.rows().await.unwrap();
    broker.restart().await.unwrap();

    committed.extend(publisher.await.unwrap().unwrap());
    wait_drained(&db, Duration::from_secs(120)).await;
    assert!(
        broker.running(),
        "the broker kept running after its restart"
    );
    relay.stop().await;

    let arrivals = kafka::read_back(
        &brokers,
        &topic,
        committed.len(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let report = check("kafka_restarted", &committed, &arrivals);
    println!(
        "{report} (killed with {pending_at_kill} rows pending and {in_flight_at_kill} records \
         in the producer's queue; {pending_at_restart} rows pending when it started again)"
    );
    assert!(pending_at_restart > 0, "the kill held messages back");
    assert!(report.is_clean(), "{report}\ntansu log:\n{}", broker.log());
    assert_eq!(db.dead_rows().await.unwrap(), 0, "a lost broker is retried");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_and_a_restarted_broker_lose_nothing() {
    init_tracing();
    frozen().await;
    restarted().await;
}
