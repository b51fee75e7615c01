//! A relay process for the fault-injection suite: reads the outbox in a
//! Postgres schema and sends to a RabbitMQ exchange or a Kafka topic until it
//! is stopped (SIGTERM or SIGINT) or killed.
//!
//! ```text
//! relay --schema <schema> --exchange <exchange>
//! relay --schema <schema> --topic <topic>
//! ```
//!
//! `DATABASE_URL`, `AMQP_URL` and `KAFKA_BROKERS` name the servers (the local
//! test servers by default). The RabbitMQ connection is named
//! `--connection-name` when given.

use std::time::Duration;

use anyhow::{Context as _, bail};
use postoffice_amqp::RabbitMq;
use postoffice_core::retry::Backoff;
use postoffice_core::{CancellationToken, JsonLayer, Producer, Sender, Transport};
use postoffice_faults::{amqp, db, kafka};
use postoffice_kafka::Kafka;
use postoffice_sqlx::PgSqlxOutboxPoller;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tower::ServiceBuilder;

#[derive(Debug, Default)]
struct Args {
    schema: Option<String>,
    exchange: Option<String>,
    topic: Option<String>,
    connection_name: Option<String>,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--schema" => args.schema = Some(value),
            "--exchange" => args.exchange = Some(value),
            "--topic" => args.topic = Some(value),
            "--connection-name" => args.connection_name = Some(value),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = parse()?;
    let schema = args.schema.context("--schema is required")?;

    let pool = db::pool(&format!("{schema}-relay"), 4).await?;
    let poller = PgSqlxOutboxPoller::<Value, Value>::builder(pool)
        .schema(&schema)
        .poll_interval(Duration::from_millis(200))
        .migrate(false)
        .build()
        .await
        .context("poller")?;

    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        stop.cancel();
    });

    match (args.exchange, args.topic) {
        (Some(exchange), None) => {
            let mut builder = RabbitMq::builder(amqp::amqp_url())
                .exchange(exchange)
                .routing_key(amqp::ROUTING_KEY);
            if let Some(name) = args.connection_name {
                builder = builder.connection_name(name);
            }
            let rabbit = builder.connect().await?;
            relay(poller, json(rabbit), token).await
        }
        (None, Some(topic)) => {
            let sink = Kafka::builder(kafka::brokers())
                .topic(topic)
                .message_timeout(Duration::from_secs(5))
                .build()?;
            relay(poller, json(sink), token).await
        }
        _ => bail!("give exactly one of --exchange and --topic"),
    }
}

fn json<S>(sink: S) -> Transport<postoffice_core::Json<S>> {
    Transport::new(ServiceBuilder::new().layer(JsonLayer::new()).service(sink))
}

async fn relay<T>(
    poller: PgSqlxOutboxPoller<Value, Value>,
    transport: Transport<T>,
    token: CancellationToken,
) -> anyhow::Result<()>
where
    T: Sender<Value, Value>,
{
    Producer::new(poller, transport)
        .batch_size(500)
        .in_flight_per_partition(32)
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(500),
        ))
        .run(token)
        .await?;
    Ok(())
}
