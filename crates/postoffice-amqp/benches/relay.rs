//! Relay throughput to RabbitMQ: 10,000 messages over 20 keys from the
//! in-memory store through `JsonLayer` and `RabbitMq`, with one and with 32
//! sends in flight per partition. Prints messages per second.
//!
//! `cargo bench -p postoffice-amqp --bench relay` (needs the broker at
//! `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use postoffice_amqp::RabbitMq;
use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::{JsonLayer, Producer, Transport};
use support::{Broker, Headers, Payload};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

const MESSAGES: usize = 10_000;

async fn relay(in_flight: usize) -> f64 {
    let broker = Broker::connect().await;
    let topology = broker.topology("bench", "events").await;
    let rabbit = RabbitMq::builder(support::amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .connect()
        .await
        .unwrap();
    let store = InMemoryOutbox::default();
    support::publish(&store, support::messages(20, 500), 1_000).await;

    let producer = Producer::new(
        store.poller::<Headers, Payload>(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit),
        ),
    )
    .batch_size(500)
    .in_flight_per_partition(in_flight);
    let token = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(producer.run(token.clone()));
    while store.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    running.await.unwrap().unwrap();

    let received = broker
        .read(&topology.queue, MESSAGES, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), MESSAGES);
    broker.delete(&topology).await;
    broker.close().await;
    MESSAGES as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    for in_flight in [1, 32] {
        let rate = relay(in_flight).await;
        println!(
            "relay {MESSAGES} messages to RabbitMQ, in_flight_per_partition {in_flight}: {rate:.0} msgs/s"
        );
    }
}
