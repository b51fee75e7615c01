//! Scenario 3: the broker closes the relay's RabbitMQ connection mid-stream,
//! twice, while messages keep being committed. Postgres outbox → in-process
//! relay → RabbitMQ.
//!
//! Only the connection named by this test is closed (`rabbitmqctl
//! close_connection`), so tests running at the same time keep theirs.
//! `RABBITMQCTL` names the command (default `rabbitmqctl`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_amqp::RabbitMq;
use postoffice_core::retry::Backoff;
use postoffice_core::{CancellationToken, JsonLayer, Producer, Transport};
use postoffice_faults::amqp::{self, Sink, close_connections_named};
use postoffice_faults::db::{self, Db};
use postoffice_faults::{check, init_tracing, messages, random_name};
use tower::ServiceBuilder;

const TOTAL: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_mid_stream_loses_nothing() {
    init_tracing();
    let db = Db::create().await.unwrap();
    let sink = Sink::declare("closed").await.unwrap();
    let reader = sink.reader().await.unwrap();

    let name = random_name("postoffice-faults-relay");
    let rabbit = RabbitMq::builder(amqp::amqp_url())
        .exchange(sink.exchange.clone())
        .routing_key(amqp::ROUTING_KEY)
        .connection_name(name.clone())
        .reconnect_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ))
        .connect()
        .await
        .unwrap();
    let relay_pool = db::pool(&random_name("po-relay"), 4).await.unwrap();
    let producer = Producer::new(
        db.poller(relay_pool).build().await.unwrap(),
        Transport::new(
            ServiceBuilder::new()
                .layer(JsonLayer::new())
                .service(rabbit.clone()),
        ),
    )
    .in_flight_per_partition(32)
    .backoff(Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(500),
    ));
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    // 5,000 messages over 20 keys, committed 50 at a time over about 6 s.
    let writer = {
        let db_pool = db.pool.clone();
        let schema = db.schema.clone();
        tokio::spawn(async move {
            let db = Db::attach(db_pool, schema);
            let mut committed = postoffice_faults::Committed::default();
            for chunk in messages(20, TOTAL, 0).chunks(50) {
                committed.extend(db.publish(chunk, 50).await.unwrap());
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            committed
        })
    };

    let mut closes = Vec::new();
    for at in [300, 1_500] {
        assert!(
            reader.wait_for(at, Duration::from_secs(60)).await,
            "{} arrived in 60 s",
            reader.len()
        );
        let closed = tokio::task::spawn_blocking({
            let name = name.clone();
            move || close_connections_named(&name)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(closed >= 1, "the relay's connection was found and closed");
        closes.push(reader.len());
    }
    assert!(
        !writer.is_finished(),
        "the connection was closed mid-stream"
    );

    let committed = writer.await.unwrap();
    let arrivals = reader
        .settle(TOTAL, Duration::from_secs(2), Duration::from_secs(120))
        .await;
    token.cancel();
    relay.await.unwrap().unwrap();
    let left = db.rows().await.unwrap();

    let report = check("rabbitmq_closed", &committed, &arrivals);
    println!(
        "{report} (closed at {closes:?} arrivals, {} reconnections)",
        rabbit.reconnections()
    );
    assert!(report.is_clean(), "{report}");
    assert!(rabbit.reconnections() >= 2, "the transport reconnected");
    assert_eq!(left, 0, "every delivered row was removed");

    reader.stop();
    sink.delete().await;
    db.close().await;
}
