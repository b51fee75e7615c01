//! The RabbitMQ transport against a real broker (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test declares its own
//! exchange and queue with random names and reads them back with amqprs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postoffice_amqp::{Error, RabbitMq};
use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::{
    EncodedMessage, JsonLayer, Message, MessageId, Producer, SendError, Transport, error_chain,
};
use support::{Broker, Headers, Payload, amqp_url, init_tracing, publish};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};

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

fn encoded(id: i64, key: &str, routing_key: Option<&str>, body: &[u8]) -> EncodedMessage {
    let mut headers = serde_json::json!({ "key": key });
    if let Some(routing_key) = routing_key {
        headers["routing_key"] = routing_key.into();
    }
    let message = Message::new(
        MessageId::new(id),
        key.as_bytes().to_vec(),
        0,
        headers.clone(),
        serde_json::Value::Null,
        0,
        chrono::Utc::now(),
        None,
    );
    EncodedMessage::new(message.meta(), headers, "application/json", body.to_vec())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The acceptance run: 10k messages over 20 keys, published to Postgres (a
/// schema of its own) in transactions of 250, relayed with 32 sends in
/// flight per partition, read back with amqprs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_ten_thousand_messages_from_postgres_in_key_order() {
    use postoffice_core::Outbox;
    use postoffice_sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller};
    use sqlx::AssertSqlSafe;

    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("relay", "events").await;
    let rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .connect()
        .await
        .unwrap();

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url())
        .await
        .unwrap();
    let schema = support::unique("amqp").replace('-', "_");
    sqlx::raw_sql(AssertSqlSafe(format!("create schema {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    let store = PgSqlxOutbox::builder(pool.clone())
        .schema(&schema)
        .build()
        .await
        .unwrap();
    let outbox = Outbox::new(store);
    for chunk in support::messages(20, 500).chunks(250) {
        let mut tx = pool.begin().await.unwrap();
        outbox
            .publish_messages(chunk.iter().cloned(), &mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // The outbox id of every (key, seq), to compare with message_id.
    let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "select id, payload::text from {schema}.postoffice_outbox"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 10_000);
    let ids: HashMap<(String, u32), i64> = rows
        .into_iter()
        .map(|(id, payload)| {
            let payload: Payload = serde_json::from_str(&payload).unwrap();
            ((payload.key, payload.seq), id)
        })
        .collect();

    let poller = PgSqlxOutboxPoller::<Headers, Payload>::builder(pool.clone())
        .schema(&schema)
        .build()
        .await
        .unwrap();
    let producer = Producer::new(
        poller,
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit),
        ),
    )
    .batch_size(500)
    .in_flight_per_partition(32);
    let token = CancellationToken::new();
    let started = std::time::Instant::now();
    let relay = tokio::spawn(producer.run(token.clone()));

    let received = broker
        .read(&topology.queue, 10_000, Duration::from_secs(30))
        .await;
    let relayed_in = started.elapsed();
    let count = format!("select count(*) from {schema}.postoffice_outbox");
    let mut left = -1_i64;
    for _ in 0..200 {
        left = sqlx::query_scalar(AssertSqlSafe(count.clone()))
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    relay.await.unwrap().unwrap();
    eprintln!("postgres to rabbitmq: 10000 messages read back after {relayed_in:?}");

    assert_eq!(left, 0, "every confirmed row was removed");
    assert_eq!(received.len(), 10_000, "every message arrives");
    assert_eq!(support::check_order(&received), 0, "no duplicates");
    let extra = broker
        .read(&topology.queue, 1, Duration::from_millis(500))
        .await;
    assert!(extra.is_empty(), "nothing arrives twice");
    for message in &received {
        let payload = message.payload();
        assert_eq!(
            ids[&(payload.key, payload.seq)],
            message.id(),
            "message_id is the outbox id"
        );
    }
    let first = &received[0];
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.delivery_mode, Some(2));
    assert!(first.timestamp.is_some_and(|t| t > 1_600_000_000));
    assert_eq!(first.headers.get("key"), Some(&first.payload().key));
    assert_eq!(first.routing_key, "events");

    sqlx::raw_sql(AssertSqlSafe(format!("drop schema {schema} cascade")))
        .execute(&pool)
        .await
        .unwrap();
    broker.delete(&topology).await;
    broker.close().await;
}

#[tokio::test]
async fn unroutable_messages_stay_pending_with_a_clear_error() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("unroutable", "bound").await;
    let mut rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("nowhere")
        .connect()
        .await
        .unwrap();

    // Directly: the returned message is a retryable error naming the route.
    let error = rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(1, "a", None, b"{}"))
        .await
        .unwrap_err();
    assert!(!error.is_permanent());
    let cause = error
        .source()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("crate error");
    assert!(
        matches!(
            cause,
            Error::Unroutable {
                reply_code: 312,
                ..
            }
        ),
        "{cause:?}"
    );
    let text = error_chain(&error);
    assert!(
        text.contains("unroutable") && text.contains("nowhere"),
        "{text}"
    );

    // Through the producer: rows stay pending and the error is reported.
    let store = InMemoryOutbox::default();
    publish(&store, support::messages(3, 1), 10).await;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&errors);
    let transport = ServiceBuilder::new()
        .layer(JsonLayer::new())
        .map_err(move |error: SendError| {
            seen.lock().unwrap().push(error_chain(&error));
            error
        })
        .service(rabbit.clone());
    let producer = Producer::new(
        store.poller::<Headers, Payload>(),
        Transport::new(transport),
    );
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || errors.lock().unwrap().len()
            >= 3)
        .await
    );
    token.cancel();
    relay.await.unwrap().unwrap();

    assert_eq!(store.pending(), 3, "rows stay");
    assert_eq!(store.delivered(), 0);
    assert!(store.dead_letters().is_empty());
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("retryable") && e.contains("NO_ROUTE")),
        "{errors:?}"
    );
    assert!(
        broker
            .read(&topology.queue, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );

    // The channel survived the returns: a routable message still goes through.
    rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(2, "a", Some("bound"), b"{}"))
        .await
        .unwrap();
    let got = broker
        .read(&topology.queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id.as_deref(), Some("2"));

    broker.delete(&topology).await;
    broker.close().await;
}

#[tokio::test]
async fn an_oversized_message_is_dead_lettered_and_the_others_arrive() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("oversized", "events").await;
    let rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .max_message_size(64 * 1024)
        .connect()
        .await
        .unwrap();

    let store = InMemoryOutbox::default();
    let mut messages = support::messages(5, 10);
    messages[17].1.filler = "x".repeat(100 * 1024);
    let ids = publish(&store, messages, 10).await;
    let big = ids[17];

    let producer = Producer::new(
        store.poller::<Headers, Payload>(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit),
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
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, big);
    assert!(
        dead[0].reason.starts_with("permanent"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("above the maximum of 65536 bytes"),
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
    support::check_order(&received);

    broker.delete(&topology).await;
    broker.close().await;
}

#[tokio::test]
async fn a_missing_exchange_fails_the_message_and_the_channel_is_reopened() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("missing", "events").await;
    let missing = support::unique("missing-x");
    let mut rabbit = RabbitMq::builder(amqp_url())
        .routing(move |message: &EncodedMessage| {
            let exchange = message.headers["exchange"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            postoffice_amqp::Route::new(exchange, "events")
        })
        .connect()
        .await
        .unwrap();

    let to = |id: i64, exchange: &str| {
        let mut message = encoded(id, "a", None, b"{}");
        message.headers["exchange"] = exchange.into();
        message
    };
    let error = rabbit
        .ready()
        .await
        .unwrap()
        .call(to(1, &missing))
        .await
        .unwrap_err();
    assert!(!error.is_permanent());
    assert!(
        error_chain(&error).contains("NOT_FOUND"),
        "{}",
        error_chain(&error)
    );

    let ok = to(2, &topology.exchange);
    rabbit.ready().await.unwrap().call(ok).await.unwrap();
    let got = broker
        .read(&topology.queue, 1, Duration::from_secs(5))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(rabbit.reconnections(), 0, "only the channel was reopened");

    broker.delete(&topology).await;
    broker.close().await;
}

#[tokio::test]
async fn a_confirm_that_never_comes_in_time_is_a_retryable_timeout() {
    init_tracing();
    let mut rabbit = RabbitMq::builder(amqp_url())
        .routing_key(support::unique("no-such-queue"))
        .confirm_timeout(Duration::from_millis(1))
        .connect()
        .await
        .unwrap();
    // Writing 16 MiB takes longer than the timeout.
    let body = vec![b' '; 16 * 1024 * 1024];
    let error = rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(1, "a", None, &body))
        .await
        .unwrap_err();
    assert!(!error.is_permanent());
    let cause = error
        .source()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("crate error");
    assert!(matches!(cause, Error::ConfirmTimeout { .. }), "{cause:?}");
}

#[tokio::test]
async fn a_later_message_of_a_failed_key_is_held_back_until_the_failure_is_seen() {
    init_tracing();
    let broker = Broker::connect().await;
    let topology = broker.topology("held-back", "events").await;
    let mut rabbit = RabbitMq::builder(amqp_url())
        .exchange(topology.exchange.clone())
        .routing_key("events")
        .max_message_size(1024)
        .connect()
        .await
        .unwrap();

    // Message 1 fails at once; message 2 of the same key is called before
    // the caller looked at that failure, message 3 of another key too.
    let first = rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(1, "a", None, &[b' '; 2048]));
    let second = rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(2, "a", None, b"{}"));
    let other = rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(3, "b", None, b"{}"));
    let error = second.await.unwrap_err();
    let cause = error
        .source()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("crate error");
    assert!(matches!(cause, Error::HeldBack { .. }), "{cause:?}");
    other.await.unwrap();
    assert!(first.await.unwrap_err().is_permanent());

    // Once the failure was seen, the key flows again.
    rabbit
        .ready()
        .await
        .unwrap()
        .call(encoded(2, "a", None, b"{}"))
        .await
        .unwrap();
    let got = broker
        .read(&topology.queue, 2, Duration::from_secs(5))
        .await;
    let ids: Vec<_> = got.iter().map(support::Received::id).collect();
    assert_eq!(ids, [3, 2]);

    broker.delete(&topology).await;
    broker.close().await;
}
