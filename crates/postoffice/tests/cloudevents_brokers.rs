//! CloudEvents from `JsonCloudEventsLayer` through the real brokers: events
//! published in Postgres, relayed to RabbitMQ (structured mode) and to Kafka
//! (structured and binary modes), read back raw and parsed with
//! cloudevents-sdk. id, source, type, time and data must round-trip exactly,
//! big integers digit for digit and non-ASCII text byte for byte.
#![cfg(all(
    feature = "postgres",
    feature = "amqp",
    feature = "kafka",
    feature = "cloudevents"
))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use postoffice::layer::cloudevents::cloudevents::{self, AttributesReader, Data, EventBuilder};
use postoffice::layer::cloudevents::{BinaryMode, JsonCloudEventsLayer};
use postoffice::outbox::sqlx::{PartitionKey, PgSqlxOutbox, PgSqlxOutboxPoller};
use postoffice::transport::amqp::lapin;
use postoffice::transport::kafka::rdkafka;
use postoffice::transport::{Kafka, RabbitMq};
use postoffice::{CancellationToken, Outbox, Producer, Sender, Transport};
use rdkafka::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::PgPool;
use tower::ServiceBuilder;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Headers {
    order: String,
    kind: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.order.clone().into_bytes()
    }
}

/// The fields whose text must come out exactly as written.
const FIELDS: [(&str, &str); 4] = [
    ("max", "18446744073709551615"),
    ("id19", "1234567890123456789"),
    ("big", "123456789012345678901234567890"),
    ("text", "\"Grüße aus 東京 🚀\""),
];

const SOURCE: &str = "/shop/orders";
const TYPE: &str = "com.example.order.created";

fn payload() -> Box<RawValue> {
    let body: Vec<String> = FIELDS.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    RawValue::from_string(format!("{{{}}}", body.join(","))).unwrap()
}

fn layer() -> JsonCloudEventsLayer {
    JsonCloudEventsLayer::new(SOURCE, TYPE)
}

fn random(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A fresh schema with one published message; returns the pool, the schema
/// and the message's id and creation time as stored.
async fn publish_one() -> (PgPool, String, i64, chrono::DateTime<chrono::Utc>) {
    let url = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let pool = PgPool::connect(&url).await.unwrap();
    let schema = random("po_ce");
    sqlx::query(sqlx::AssertSqlSafe(format!("create schema {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    let outbox = Outbox::new(
        PgSqlxOutbox::builder(pool.clone())
            .schema(&schema)
            .build()
            .await
            .unwrap(),
    );
    let mut tx = pool.begin().await.unwrap();
    let headers = Headers {
        order: "o-7".into(),
        kind: "created".into(),
    };
    outbox
        .publish_messages([(headers, payload())], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (id, created_at): (i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select id, created_at from {schema}.postoffice_outbox"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
    (pool, schema, id, created_at)
}

/// Relays the schema's messages through `transport` until none is pending.
async fn relay<T>(pool: &PgPool, schema: &str, transport: T)
where
    T: Sender<Headers, Box<RawValue>>,
{
    let poller = PgSqlxOutboxPoller::<Headers, Box<RawValue>>::builder(pool.clone())
        .schema(schema)
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let token = CancellationToken::new();
    let run = tokio::spawn(Producer::new(poller, Transport::new(transport)).run(token.clone()));
    let count = format!("select count(*) from {schema}.postoffice_outbox");
    for _ in 0..300 {
        let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.as_str()))
            .fetch_one(pool)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    run.await.unwrap().unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop schema {schema} cascade")))
        .execute(pool)
        .await
        .unwrap();
}

/// Checks the event's attributes and the exact text of every data field.
fn check(
    event: &cloudevents::Event,
    data_text: &str,
    id: i64,
    created_at: chrono::DateTime<chrono::Utc>,
) {
    assert_eq!(event.id(), id.to_string());
    assert_eq!(event.source().as_str(), SOURCE);
    assert_eq!(event.ty(), TYPE);
    assert_eq!(
        event.time(),
        Some(&created_at),
        "time round-trips to the stored instant"
    );
    let Some(Data::Json(data)) = event.data() else {
        panic!("json data expected, got {:?}", event.data())
    };
    assert_eq!(data["max"].as_u64(), Some(u64::MAX));
    assert_eq!(data["id19"].as_u64(), Some(1_234_567_890_123_456_789));
    assert_eq!(data["text"], "Grüße aus 東京 🚀");

    let fields: HashMap<String, Box<RawValue>> = serde_json::from_str(data_text).unwrap();
    for (name, text) in FIELDS {
        assert_eq!(
            fields[name].get(),
            text,
            "field {name} must keep its exact text"
        );
    }
}

#[tokio::test]
async fn structured_events_round_trip_through_rabbitmq() {
    let url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let queue = random("po_ce_queue");
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let (pool, schema, id, created_at) = publish_one().await;
    let rabbit = RabbitMq::builder(&url)
        .routing_key(&queue)
        .connect()
        .await
        .unwrap();
    relay(
        &pool,
        &schema,
        ServiceBuilder::new().layer(layer()).service(rabbit),
    )
    .await;

    let delivery = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the event is in the queue");
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|t| t.to_string());
    assert_eq!(
        content_type.as_deref(),
        Some("application/cloudevents+json")
    );
    let event: cloudevents::Event = serde_json::from_slice(&delivery.data).unwrap();

    #[derive(Deserialize)]
    struct Envelope {
        data: Box<RawValue>,
    }
    let envelope: Envelope = serde_json::from_slice(&delivery.data).unwrap();
    check(&event, envelope.data.get(), id, created_at);
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}

async fn kafka_round_trip(
    mode: Option<BinaryMode>,
) -> (
    rdkafka::message::OwnedMessage,
    i64,
    chrono::DateTime<chrono::Utc>,
) {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let brokers = env("KAFKA_BROKERS", "127.0.0.1:9092");
    let topic = random("po-ce-topic").replace('_', "-");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }

    let (pool, schema, id, created_at) = publish_one().await;
    let kafka = Kafka::builder(&brokers).topic(&topic).build().unwrap();
    let layer = match mode {
        Some(mode) => layer().binary(mode),
        None => layer(),
    };
    relay(
        &pool,
        &schema,
        ServiceBuilder::new().layer(layer).service(kafka.clone()),
    )
    .await;
    kafka.flush(Duration::from_secs(10)).await.unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", random("po-ce-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the event arrives")
        .unwrap()
        .detach();
    (message, id, created_at)
}

#[tokio::test]
async fn structured_events_round_trip_through_kafka() {
    let (message, id, created_at) = kafka_round_trip(None).await;
    let body = message.payload().unwrap();
    let event: cloudevents::Event = serde_json::from_slice(body).unwrap();

    #[derive(Deserialize)]
    struct Envelope {
        data: Box<RawValue>,
    }
    let envelope: Envelope = serde_json::from_slice(body).unwrap();
    check(&event, envelope.data.get(), id, created_at);
}

#[tokio::test]
async fn binary_events_round_trip_through_kafka() {
    use rdkafka::message::Headers as _;

    let (message, id, created_at) = kafka_round_trip(Some(BinaryMode::Kafka)).await;
    let mut attributes = HashMap::new();
    for header in message.headers().unwrap().iter() {
        let value = String::from_utf8(header.value.unwrap_or_default().to_vec()).unwrap();
        attributes.insert(header.key.to_owned(), value);
    }
    assert_eq!(attributes["ce_specversion"], "1.0");
    let time = chrono::DateTime::parse_from_rfc3339(&attributes["ce_time"])
        .unwrap()
        .with_timezone(&chrono::Utc);
    let body = std::str::from_utf8(message.payload().unwrap()).unwrap();
    let event = cloudevents::EventBuilderV10::new()
        .id(attributes["ce_id"].clone())
        .source(attributes["ce_source"].clone())
        .ty(attributes["ce_type"].clone())
        .time(time)
        .data(
            "application/json",
            serde_json::from_str::<serde_json::Value>(body).unwrap(),
        )
        .build()
        .unwrap();
    check(&event, body, id, created_at);
}
