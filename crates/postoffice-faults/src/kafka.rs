//! Kafka side of the scenarios: a topic per test and a reader that reads it
//! back from the beginning.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use postoffice_kafka::MESSAGE_ID_HEADER;
use postoffice_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use postoffice_kafka::rdkafka::client::DefaultClientContext;
use postoffice_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use postoffice_kafka::rdkafka::message::{Headers as _, Message as _};
use postoffice_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Arrival, random_name};

/// Partitions of every scenario topic.
pub const PARTITIONS: i32 = 3;

/// `KAFKA_BROKERS`, or the local test broker.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Creates a topic named for one test on `brokers` (tansu does not create
/// topics on first produce).
///
/// # Errors
///
/// When the broker cannot be reached or refuses.
pub async fn create_topic(brokers: &str, name: &str) -> anyhow::Result<String> {
    let topic = random_name(&format!("postoffice-faults-{name}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &options)
        .await
        .with_context(|| format!("create topic {topic} on {brokers}"))?;
    for result in results {
        result.map_err(|(name, code)| anyhow!("creating topic {name} failed: {code}"))?;
    }
    Ok(topic)
}

/// Reads `topic` from the beginning until `distinct` different messages
/// arrived and then nothing more for `quiet`, or until `timeout`.
///
/// # Errors
///
/// When the consumer cannot be created or reading fails.
pub async fn read_back(
    brokers: &str,
    topic: &str,
    distinct: usize,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Arrival>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", random_name("postoffice-faults-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrivals = Vec::new();
    let mut seen = HashSet::new();
    loop {
        // Before all arrived, wait up to the deadline; after, only `quiet`.
        let wait = if seen.len() < distinct {
            deadline
        } else {
            (tokio::time::Instant::now() + quiet).min(deadline)
        };
        let Ok(received) = tokio::time::timeout_at(wait, consumer.recv()).await else {
            break;
        };
        let message = received?;
        let id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == MESSAGE_ID_HEADER)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        });
        let arrival = Arrival::from_body(id, message.payload().unwrap_or_default())
            .unwrap_or_else(|_| Arrival::new(id, "<undecodable>", 0));
        seen.insert((arrival.key.clone(), arrival.seq));
        arrivals.push(arrival);
    }
    Ok(arrivals)
}
