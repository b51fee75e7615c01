//! Scenario 6: a transport failing 20 % of 10,000 sends at random (retryable;
//! half before sending, half by losing the confirmation) in front of the
//! in-memory transport, relayed from Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::retry::Backoff;
use postoffice_core::transport::InMemory;
use postoffice_core::{CancellationToken, Message, Producer, Transport};
use postoffice_faults::db::{self, Db};
use postoffice_faults::inject::Flaky;
use postoffice_faults::{Arrival, Headers, Payload, check, init_tracing, messages, random_name};

const TOTAL: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_sends_failing_at_random_loses_nothing() {
    init_tracing();
    let db = Db::create().await.unwrap();
    let committed = db.publish(&messages(20, TOTAL, 0), 500).await.unwrap();
    let pool = db::pool(&random_name("po-relay"), 4).await.unwrap();

    let received: InMemory<Message<Headers, Payload>> = InMemory::default();
    let flaky = Flaky::new(received.clone(), 0.2);
    let stats = flaky.stats();
    let producer = Producer::new(
        db.poller(pool).build().await.unwrap(),
        Transport::new(flaky),
    )
    // One send in flight per partition: the failures hit each send on its
    // own, so a later send could succeed where an earlier one failed, which
    // only a transport that enqueues in call order and fails from a point on
    // (RabbitMQ, Kafka) may allow with more in flight.
    .batch_size(100)
    .backoff(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(20),
    ));
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while db.rows().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows still pending after 300 s",
            db.rows().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    relay.await.unwrap().unwrap();

    let arrivals: Vec<Arrival> = received.messages().iter().map(Arrival::from).collect();
    let report = check("flaky_transport", &committed, &arrivals);
    println!(
        "{report} ({} sends, {} failed before sending, {} lost their confirmation, {} dead)",
        stats.calls(),
        stats.dropped(),
        stats.unconfirmed(),
        db.dead_rows().await.unwrap()
    );
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        db.dead_rows().await.unwrap(),
        0,
        "retryable failures are not set aside"
    );
    let failed = stats.dropped() + stats.unconfirmed();
    assert!(
        failed * 100 >= stats.calls() * 15,
        "about a fifth of the sends failed"
    );
    db.close().await;
}
