//! Recovery after the broker closes the transport's connection mid-stream.
//! Only the connection with this test's client-provided name is closed
//! (`rabbitmqctl close_connection`), so other tests running at the same time,
//! in this process or another, keep theirs. `RABBITMQCTL` names the command
//! (default `rabbitmqctl`).

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

fn rabbitmqctl(args: &[&str]) -> String {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = command.split_whitespace();
    let program = words.next().expect("RABBITMQCTL names a command");
    let output = std::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Closes the connections whose client-provided name is `name`; returns how
/// many. The listing has one line per connection: the pid in the form
/// `close_connection` takes, a tab, the client properties.
fn close_connections_named(name: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "--silent",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in listing.lines() {
        if let Some((pid, properties)) = line.split_once('\t')
            && properties.contains(&wanted)
        {
            rabbitmqctl(&[
                "close_connection",
                pid.trim(),
                "closed by the recovery test",
            ]);
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_after_the_broker_closes_the_connection() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("recovery", "events").await;
    let name = support::unique("recovery");
    let rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .connection_name(name.clone())
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
    let closed = tokio::task::spawn_blocking(move || close_connections_named(&name))
        .await
        .unwrap();
    assert_eq!(closed, 1, "the transport's connection was found and closed");
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

    let reader = broker;
    let received = reader
        .read(&topology.queue, usize::MAX, Duration::from_secs(2))
        .await;
    let arrived: HashSet<i64> = received.iter().map(support::Received::id).collect();
    let expected: HashSet<i64> = ids.iter().map(|id| id.get()).collect();
    assert_eq!(expected.len(), 5_000);
    assert_eq!(arrived, expected, "none lost");
    let duplicates = support::check_order(&received);
    println!(
        "closed the connection after {delivered_at_close} of 5000 confirmed; \
         {} received, {duplicates} duplicates, {} reconnections",
        received.len(),
        rabbit.reconnections()
    );

    reader.delete(&topology).await;
    reader.close().await;
}
