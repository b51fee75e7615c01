//! The main example: orders and their events written in one transaction, then
//! relayed.
//!
//! It creates an `orders` table, inserts orders and publishes their events in
//! one transaction, publishes in a second transaction that rolls back, relays
//! what was committed and prints what the transport received.
//!
//! Backends come from the environment:
//! - `DATABASE_URL` set: Postgres; otherwise the embedded default, a SQLite
//!   file in a temporary directory (no server needed);
//! - `AMQP_URL` set (feature `amqp`): RabbitMQ; `KAFKA_BROKERS` set (feature
//!   `kafka`): Kafka; otherwise the in-memory transport.
//!
//! ```text
//! cargo run -p postoffice-examples --example orders
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run -p postoffice-examples --features amqp --example orders
//! KAFKA_BROKERS=127.0.0.1:9092 cargo run -p postoffice-examples --features kafka --example orders
//! ```
//!
//! It exits with an error when the transport did not confirm exactly the
//! three committed events.

use std::time::Duration;

use anyhow::{Context, bail};
use postoffice::transport::InMemory;
use postoffice::{
    CancellationToken, EncodedMessage, JsonLayer, PartitionKey, Poller, Producer, Transport,
};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;

/// Headers of an order event; the order id keeps each order's events in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderEvent {
    order_id: i64,
    kind: String,
}

impl PartitionKey for OrderEvent {
    fn partition_key(&self) -> Vec<u8> {
        self.order_id.to_be_bytes().to_vec()
    }
}

/// Payload of an order event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPayload {
    customer: String,
    total_cents: i64,
}

const ORDERS: [(&str, i64); 3] = [("ada", 1250), ("grace", 990), ("linus", 4200)];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,postoffice=info".into()),
        )
        .init();

    let relayed = match std::env::var("DATABASE_URL") {
        Ok(url) => postgres::run(&url).await?,
        Err(_) => sqlite::run().await?,
    };
    if relayed.len() != ORDERS.len() {
        bail!(
            "expected {} events, the transport received {}",
            ORDERS.len(),
            relayed.len()
        );
    }
    println!(
        "ok: {} events committed and relayed, the rolled-back one never left",
        relayed.len()
    );
    Ok(())
}

/// Relays until `expected` messages went through, then stops the producer.
async fn relay<Po>(poller: Po, expected: usize) -> anyhow::Result<Vec<EncodedMessage>>
where
    Po: Poller<OrderEvent, OrderPayload>,
{
    let received: InMemory<EncodedMessage> = InMemory::default();
    let transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(transports::tap(received.clone()).await?),
    );
    let token = CancellationToken::new();
    let producer = Producer::new(poller, transport).shutdown_grace(Duration::from_secs(5));
    let task = tokio::spawn(producer.run(token.clone()));

    let got = received.wait_for(expected, Duration::from_secs(30)).await;
    // Give a wrongly published extra message the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    task.await.context("relay task")??;
    got?;

    let messages = received.messages();
    for message in &messages {
        println!(
            "received #{} key={} headers={} body={}",
            message.meta.id,
            i64::from_be_bytes(
                message
                    .meta
                    .partition_key
                    .clone()
                    .try_into()
                    .unwrap_or_default()
            ),
            message.headers,
            String::from_utf8_lossy(&message.body),
        );
    }
    Ok(messages)
}

fn events() -> impl Iterator<Item = (String, i64)> {
    ORDERS
        .iter()
        .map(|(customer, total)| ((*customer).to_owned(), *total))
}

mod postgres {
    use super::*;
    use postoffice::Outbox;
    use postoffice::outbox::sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller};
    use sqlx::postgres::PgPoolOptions;

    pub(crate) async fn run(url: &str) -> anyhow::Result<Vec<EncodedMessage>> {
        println!("store: Postgres at {url}");
        let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
        sqlx::query(
            "create table if not exists orders (
                id bigint generated always as identity primary key,
                customer text not null,
                total_cents bigint not null
            )",
        )
        .execute(&pool)
        .await?;
        let outbox = Outbox::new(PgSqlxOutbox::try_new(pool.clone()).await?);
        // Leftovers of an earlier run would be relayed too; start clean.
        sqlx::query("delete from postoffice_outbox")
            .execute(&pool)
            .await?;

        let mut tx = pool.begin().await?;
        let mut batch = Vec::new();
        for (customer, total_cents) in events() {
            let (order_id,): (i64,) = sqlx::query_as(
                "insert into orders (customer, total_cents) values ($1, $2) returning id",
            )
            .bind(&customer)
            .bind(total_cents)
            .fetch_one(&mut *tx)
            .await?;
            let headers = OrderEvent {
                order_id,
                kind: "order_created".into(),
            };
            batch.push((
                headers,
                OrderPayload {
                    customer,
                    total_cents,
                },
            ));
        }
        outbox.publish_messages(batch, &mut tx).await?;
        tx.commit().await?;

        let mut tx = pool.begin().await?;
        let headers = OrderEvent {
            order_id: -1,
            kind: "order_created".into(),
        };
        let payload = OrderPayload {
            customer: "rolled back".into(),
            total_cents: 0,
        };
        outbox.publish(headers, payload, &mut tx).await?;
        tx.rollback().await?;

        let poller = PgSqlxOutboxPoller::<OrderEvent, OrderPayload>::try_new(
            pool,
            Duration::from_millis(200),
        )
        .await?;
        relay(poller, ORDERS.len()).await
    }
}

mod sqlite {
    use super::*;
    use postoffice::Outbox;
    use postoffice::outbox::sqlx::{SqliteSqlxOutbox, SqliteSqlxOutboxPoller};
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    pub(crate) async fn run() -> anyhow::Result<Vec<EncodedMessage>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("orders.db");
        println!(
            "store: SQLite at {} (set DATABASE_URL for Postgres)",
            file.display()
        );
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "create table if not exists orders (
                id integer primary key autoincrement,
                customer text not null,
                total_cents integer not null
            )",
        )
        .execute(&pool)
        .await?;
        let outbox = Outbox::new(SqliteSqlxOutbox::try_new(pool.clone()).await?);

        let mut tx = pool.begin().await?;
        let mut batch = Vec::new();
        for (customer, total_cents) in events() {
            let (order_id,): (i64,) = sqlx::query_as(
                "insert into orders (customer, total_cents) values (?1, ?2) returning id",
            )
            .bind(&customer)
            .bind(total_cents)
            .fetch_one(&mut *tx)
            .await?;
            let headers = OrderEvent {
                order_id,
                kind: "order_created".into(),
            };
            batch.push((
                headers,
                OrderPayload {
                    customer,
                    total_cents,
                },
            ));
        }
        outbox.publish_messages(batch, &mut tx).await?;
        tx.commit().await?;

        let mut tx = pool.begin().await?;
        let headers = OrderEvent {
            order_id: -1,
            kind: "order_created".into(),
        };
        let payload = OrderPayload {
            customer: "rolled back".into(),
            total_cents: 0,
        };
        outbox.publish(headers, payload, &mut tx).await?;
        tx.rollback().await?;

        let poller = SqliteSqlxOutboxPoller::<OrderEvent, OrderPayload>::try_new(
            pool.clone(),
            Duration::from_millis(200),
        )
        .await?;
        let relayed = relay(poller, ORDERS.len()).await?;
        pool.close().await;
        Ok(relayed)
    }
}

mod transports {
    use postoffice::transport::InMemory;
    use postoffice::{BoxError, EncodedMessage};
    use tower::util::BoxCloneSyncService;
    use tower::{Layer, Service, ServiceExt};

    type Sender = BoxCloneSyncService<EncodedMessage, (), BoxError>;

    /// The transport chosen by the environment (`AMQP_URL`, `KAFKA_BROKERS`,
    /// or neither for the in-memory one), recording into `received` every
    /// message it confirmed.
    pub(crate) async fn tap(received: InMemory<EncodedMessage>) -> anyhow::Result<Sender> {
        if let Ok(url) = std::env::var("AMQP_URL") {
            return rabbitmq(&url, received).await;
        }
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
            return kafka(&brokers, received).await;
        }
        println!("transport: in memory (set AMQP_URL or KAFKA_BROKERS for a broker)");
        Ok(BoxCloneSyncService::new(
            tower::util::MapErrLayer::new(BoxError::from).layer(received),
        ))
    }

    /// Sends through `inner`, then records what it confirmed.
    #[cfg(any(feature = "amqp", feature = "kafka"))]
    fn recording<S>(inner: S, received: InMemory<EncodedMessage>) -> Sender
    where
        S: Service<EncodedMessage> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        BoxCloneSyncService::new(tower::service_fn(move |message: EncodedMessage| {
            let (inner, received) = (inner.clone(), received.clone());
            async move {
                inner.oneshot(message.clone()).await.map_err(Into::into)?;
                received.oneshot(message).await.map_err(BoxError::from)
            }
        }))
    }

    #[cfg(feature = "amqp")]
    async fn rabbitmq(url: &str, received: InMemory<EncodedMessage>) -> anyhow::Result<Sender> {
        use postoffice::transport::RabbitMq;
        use postoffice::transport::amqp::lapin::{self, options::QueueDeclareOptions};

        const QUEUE: &str = "postoffice_orders_example";
        println!("transport: RabbitMQ at {url}, queue {QUEUE}");
        // The default exchange routes by queue name; make sure the queue is there.
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(QUEUE.into(), options, Default::default())
            .await?;
        connection.close(200, "declared".into()).await?;

        let rabbit = RabbitMq::builder(url).routing_key(QUEUE).connect().await?;
        Ok(recording(rabbit, received))
    }

    #[cfg(not(feature = "amqp"))]
    async fn rabbitmq(_: &str, _: InMemory<EncodedMessage>) -> anyhow::Result<Sender> {
        anyhow::bail!(
            "AMQP_URL is set but the example was built without RabbitMQ: add --features amqp"
        )
    }

    #[cfg(feature = "kafka")]
    async fn kafka(brokers: &str, received: InMemory<EncodedMessage>) -> anyhow::Result<Sender> {
        use postoffice::transport::Kafka;
        use postoffice::transport::kafka::rdkafka::ClientConfig;
        use postoffice::transport::kafka::rdkafka::admin::{
            AdminClient, AdminOptions, NewTopic, TopicReplication,
        };
        use postoffice::transport::kafka::rdkafka::client::DefaultClientContext;

        const TOPIC: &str = "postoffice-orders-example";
        println!("transport: Kafka at {brokers}, topic {TOPIC}");
        // Some brokers do not create topics on first use; create it (an
        // "already exists" answer is fine).
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        let topic = NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1));
        admin.create_topics([&topic], &AdminOptions::new()).await?;

        let kafka = Kafka::builder(brokers).topic(TOPIC).build()?;
        Ok(recording(kafka, received))
    }

    #[cfg(not(feature = "kafka"))]
    async fn kafka(_: &str, _: InMemory<EncodedMessage>) -> anyhow::Result<Sender> {
        anyhow::bail!(
            "KAFKA_BROKERS is set but the example was built without Kafka: add --features kafka"
        )
    }
}
