//! The calls of SPEC §2, written exactly as users write them, through the
//! umbrella crate. This file only needs to compile (with all features) and
//! run its small in-memory check; the backends are exercised in their crates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::time::Duration;

use postoffice::outbox::sqlx::{PartitionKey, PgSqlxOutbox, PgSqlxOutboxPoller};
use postoffice::transport::InMemory;
use postoffice::{CancellationToken, JsonLayer, Outbox, Producer, Transport};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Headers {
    key: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

/// Headers on the relay side need only serde traits, not `PartitionKey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RelayHeaders {
    key: String,
}

async fn postgres_paths(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    let outbox = Outbox::new(PgSqlxOutbox::try_new(pool.clone()).await?);
    let mut tx = pool.begin().await?;
    outbox
        .publish_messages(vec![(Headers { key: "a".into() }, 1_u32)], &mut tx)
        .await?;
    outbox
        .publish_messages(vec![(Headers { key: "a".into() }, 2_u32)], &mut *tx)
        .await?;
    tx.commit().await?;

    let poller =
        PgSqlxOutboxPoller::<RelayHeaders, u32>::try_new(pool, Duration::from_secs(1)).await?;
    let transport = Transport::new(InMemory::default());
    let token = CancellationToken::new();
    Producer::new(poller, transport).run(token).await?;
    Ok(())
}

#[cfg(feature = "amqp")]
async fn rabbitmq_path() -> Result<(), Box<dyn std::error::Error>> {
    use postoffice::transport::RabbitMq;
    let rabbit = RabbitMq::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    let _transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(rabbit),
    );
    Ok(())
}

#[cfg(feature = "kafka")]
fn kafka_path() -> Result<(), Box<dyn std::error::Error>> {
    use postoffice::transport::Kafka;
    let kafka = Kafka::builder("127.0.0.1:9092").topic("orders").build()?;
    let _transport = Transport::new(ServiceBuilder::new().layer(JsonLayer::new()).service(kafka));
    Ok(())
}

#[cfg(feature = "cloudevents")]
fn cloudevents_path() {
    use postoffice::JsonCloudEventsLayer;
    let layer = JsonCloudEventsLayer::new("/shop/orders", "shop.order.created");
    let received: InMemory<postoffice::EncodedMessage> = InMemory::default();
    let _transport = Transport::new(ServiceBuilder::new().layer(layer).service(received));
}

#[tokio::test]
async fn in_memory_paths_relay_a_message() {
    use postoffice::outbox::memory::InMemoryOutbox;

    let store = InMemoryOutbox::default();
    let outbox = Outbox::new(store.clone());
    let mut tx = store.begin();
    outbox
        .publish_messages([(Headers { key: "k".into() }, "hello")], &mut tx)
        .await
        .unwrap();
    tx.commit();

    let received = InMemory::default();
    let transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(received.clone()),
    );
    let token = CancellationToken::new();
    let relay = tokio::spawn(
        Producer::new(store.poller::<RelayHeaders, String>(), transport).run(token.clone()),
    );
    let got = received.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&got[0].body[..], br#""hello""#);
    token.cancel();
    relay.await.unwrap().unwrap();
}
