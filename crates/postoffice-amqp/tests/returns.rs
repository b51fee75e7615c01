//! Returned (unroutable) messages while many publishes wait for their
//! confirms, and messages the broker cannot take at all, against a real
//! broker (`AMQP_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postoffice_amqp::{RabbitMq, Route};
use postoffice_core::{EncodedMessage, JsonLayer, Producer, Transport};
use support::{Broker, Headers, Payload, amqp_url, init_tracing, publish};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

/// Waits until `done` holds, checking every 20 ms, for at most `limit`.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// How many times the returns test runs its 2000 messages; one run loses a
/// message about half the time when returns are matched to the wrong
/// confirm.
const ROUNDS: usize = 3;

/// 2000 messages over 16 keys, 32 in flight per partition; the first publish
/// of every 25th message goes to a routing key no queue is bound to, so the
/// broker returns it while many other publishes wait for their confirms. A
/// returned message must fail (and be sent again), never count as
/// delivered: in the end every message is in the queue or still pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_is_never_counted_as_delivered() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("returns", "events").await;
    for round in 0..ROUNDS {
        returns_round(round, &broker, &topology).await;
    }
    broker.delete(&topology).await;
    broker.close().await;
}

async fn returns_round(round: usize, broker: &Broker, topology: &support::Topology) {
    let returned_once: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let diverted = Arc::clone(&returned_once);
    let exchange = topology.exchange.clone();
    let rabbit = RabbitMq::builder(amqp_url())
        .routing(move |message: &EncodedMessage| {
            let id = message.id().get();
            if id % 25 == 7 && diverted.lock().unwrap().insert(id) {
                Route::new(exchange.clone(), "nowhere")
            } else {
                Route::new(exchange.clone(), "events")
            }
        })
        .connect()
        .await
        .unwrap();

    let store = postoffice_core::memory::InMemoryOutbox::default();
    let ids = publish(&store, support::messages(16, 125), 250).await;
    assert_eq!(ids.len(), 2000);
    let producer = Producer::new(
        store.poller::<Headers, Payload>(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit),
        ),
    )
    .batch_size(200)
    .in_flight_per_partition(32);
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    let settled = wait_until(Duration::from_secs(60), || store.pending() == 0).await;
    token.cancel();
    relay.await.unwrap().unwrap();

    // Everything sent, duplicates included, so that the next round starts
    // with an empty queue.
    let received = broker
        .read(&topology.queue, usize::MAX, Duration::from_secs(2))
        .await;
    let arrived: HashSet<i64> = received.iter().map(support::Received::id).collect();
    let lost: Vec<i64> = ids
        .iter()
        .map(|id| id.get())
        .filter(|id| !arrived.contains(id))
        .collect();
    let pending = store.pending();
    let diverted = returned_once.lock().unwrap().len();
    eprintln!(
        "returns round {round}: {diverted} first publishes diverted, {} arrived ({} distinct), {pending} pending, not arrived {lost:?}",
        received.len(),
        arrived.len()
    );
    assert!(diverted >= 70, "only {diverted} messages were diverted");
    assert!(
        lost.len() <= pending,
        "round {round}: {} messages neither arrived nor are pending: {lost:?} ({pending} pending)",
        lost.len()
    );
    assert!(settled, "round {round}: {pending} messages still pending");
    assert!(lost.is_empty(), "round {round}: not arrived: {lost:?}");
    assert!(store.dead_letters().is_empty());
}

/// Headers with an optional extra field, published as an AMQP header.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BigHeaders {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    big: Option<String>,
}

impl postoffice_core::PartitionKey for BigHeaders {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

/// A header value of 5 MB cannot travel in one frame: the broker would close
/// the connection every message shares, again on every retry. The message is
/// dead-lettered before it is published; the others arrive and the
/// connection stays up.
#[tokio::test]
async fn a_message_whose_headers_exceed_the_frame_size_is_dead_lettered() {
    use postoffice_amqp::Error;
    use std::error::Error as _;
    use tower::{Service, ServiceExt};

    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("big-headers", "events").await;
    let rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .connect()
        .await
        .unwrap();

    let store = postoffice_core::memory::InMemoryOutbox::default();
    let messages: Vec<(BigHeaders, Payload)> = support::messages(5, 10)
        .into_iter()
        .enumerate()
        .map(|(index, (headers, payload))| {
            let big = (index == 17).then(|| "v".repeat(5_000_000));
            (
                BigHeaders {
                    key: headers.key,
                    big,
                },
                payload,
            )
        })
        .collect();
    let mut tx = store.begin();
    postoffice_core::Outbox::new(store.clone())
        .publish_messages(messages, &mut tx)
        .await
        .unwrap();
    let ids = tx.commit();
    let big = ids[17];

    let producer = Producer::new(
        store.poller::<BigHeaders, Payload>(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit.clone()),
        ),
    )
    .in_flight_per_partition(8);
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    assert!(wait_until(Duration::from_secs(20), || store.pending() == 0).await);
    token.cancel();
    relay.await.unwrap().unwrap();
    // Everything that arrived: a message already published when an earlier
    // one of its partition failed is sent again, so it may arrive twice.
    let received = broker
        .read(&topology.queue, usize::MAX, Duration::from_secs(2))
        .await;

    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, big);
    assert!(
        dead[0].reason.starts_with("permanent") && dead[0].reason.contains("frame size"),
        "{}",
        dead[0].reason
    );
    let arrived: HashSet<i64> = received.iter().map(support::Received::id).collect();
    let expected: HashSet<i64> = ids
        .iter()
        .map(|id| id.get())
        .filter(|id| *id != big.get())
        .collect();
    assert_eq!(arrived, expected, "all the others arrive");
    // Key order is not checked here (other tests cover it). Known gap: the
    // failed message's response future counts as "seen" as soon as the
    // producer's FuturesOrdered polls it, before the producer acts on it, so
    // a later message of the failed key called in between can overtake the
    // held-back ones.
    assert_eq!(rabbit.reconnections(), 0, "the connection was never lost");

    // Directly: the error names the sizes.
    let message = {
        let headers = serde_json::json!({ "key": "a", "big": "v".repeat(200_000) });
        let message = postoffice_core::Message::new(
            postoffice_core::MessageId::new(99),
            b"a".to_vec(),
            0,
            headers.clone(),
            serde_json::Value::Null,
            0,
            chrono::Utc::now(),
            None,
        );
        EncodedMessage::new(message.meta(), headers, "application/json", b"{}".to_vec())
    };
    let mut service = rabbit.clone();
    let error = service
        .ready()
        .await
        .unwrap()
        .call(message)
        .await
        .unwrap_err();
    assert!(error.is_permanent());
    let cause = error
        .source()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("crate error");
    assert!(
        matches!(cause, Error::HeadersTooLarge { size, max, .. } if *size > 200_000 && *max < *size),
        "{cause:?}"
    );
    assert_eq!(rabbit.reconnections(), 0);

    broker.delete(&topology).await;
    broker.close().await;
}
