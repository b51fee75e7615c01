//! Recovery after the broker closes every connection mid-stream. In a test
//! binary of its own, because `rabbitmqctl close_all_connections` closes the
//! connections of every test running at the time. `RABBITMQCTL` names the
//! command (default `rabbitmqctl`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use postoffice_amqp::RabbitMq;
use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::{JsonLayer, Producer, Transport};
use support::{Broker, Headers, Payload, amqp_url, init_tracing};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

fn close_all_connections() {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = command.split_whitespace();
    let program = words.next().expect("RABBITMQCTL names a command");
    let status = std::process::Command::new(program)
        .args(words)
        .args(["close_all_connections", "test"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run rabbitmqctl");
    assert!(
        status.success(),
        "rabbitmqctl close_all_connections failed: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_after_the_broker_closes_all_connections() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("recovery", "events").await;
    let rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .connection_name(support::unique("recovery"))
        .connect()
        .await
        .unwrap();

    let store = InMemoryOutbox::default();
    let producer = Producer::new(
        store.poller::<Headers, Payload>(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit.clone()),
        ),
    )
    .in_flight_per_partition(32)
    .backoff(postoffice_core::retry::Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(500),
    ));
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    // 5,000 messages over 20 keys, committed 50 at a time over about 6 s.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in support::messages(20, 250).chunks(50) {
                ids.extend(support::publish(&store, chunk.to_vec(), 50).await);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            ids
        })
    };

    while store.delivered() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(close_all_connections)
        .await
        .unwrap();
    let delivered_at_close = store.delivered();
    assert!(
        !writer.is_finished(),
        "the connections were closed mid-stream"
    );

    let ids = writer.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(store.pending(), 0, "every row was confirmed");
    assert!(rabbit.reconnections() >= 1, "the transport reconnected");

    // The test's first connection was closed too: read back on a new one.
    let reader = Broker::connect().await;
    let received = reader
        .read(&topology.queue, usize::MAX, Duration::from_secs(2))
        .await;
    let arrived: HashSet<i64> = received.iter().map(support::Received::id).collect();
    let expected: HashSet<i64> = ids.iter().map(|id| id.get()).collect();
    assert_eq!(expected.len(), 5_000);
    assert_eq!(arrived, expected, "none lost");
    let duplicates = support::check_order(&received);
    println!(
        "closed all connections after {delivered_at_close} of 5000 confirmed; \
         {} received, {duplicates} duplicates, {} reconnections",
        received.len(),
        rabbit.reconnections()
    );

    reader.delete(&topology).await;
    reader.close().await;
}
