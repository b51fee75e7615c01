//! Scenario 4: the Kafka broker is frozen (SIGSTOP) past the transport's
//! message timeout and resumed; then a broker that keeps its data (tansu on
//! Postgres storage) is stopped mid-stream and started again on the same
//! storage. Postgres outbox → in-process relay → Kafka.
//!
//! One test runs both in order, so the shared broker is frozen only while
//! nothing else of this binary uses it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::retry::Backoff;
use postoffice_core::{CancellationToken, JsonLayer, Producer, Transport};
use postoffice_faults::db::{self, Db};
use postoffice_faults::process::{shared_broker_pid, signal};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_and_a_restarted_broker_lose_nothing() {
    init_tracing();
    frozen().await;
}
