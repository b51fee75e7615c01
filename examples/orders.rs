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
//! ```

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

    /// The transport chosen by the environment, recording into `received`
    /// every message it confirmed.
    pub(crate) async fn tap(
        received: InMemory<EncodedMessage>,
    ) -> anyhow::Result<BoxCloneSyncService<EncodedMessage, (), BoxError>> {
        println!("transport: in memory");
        Ok(BoxCloneSyncService::new(
            tower::util::MapErrLayer::new(BoxError::from).layer(received),
        ))
    }

    use tower::Layer;
}
