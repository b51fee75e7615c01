//! Shared helpers of the RabbitMQ tests. The broker side (declaring, reading
//! back, deleting) uses `amqprs`, a different client library than the
//! transport's lapin.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, Channel, ExchangeDeclareArguments,
    ExchangeDeleteArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{FieldName, FieldTable, FieldValue};
use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::{MessageId, Outbox, PartitionKey};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("postoffice-test-{prefix}-{suffix:016x}")
}

/// Prints the transport's logs when `RUST_LOG` asks for them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Headers {
    pub key: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub key: String,
    pub seq: u32,
    #[serde(default)]
    pub filler: String,
}

/// `keys` keys with `per_key` messages each, interleaved key by key.
pub fn messages(keys: usize, per_key: u32) -> Vec<(Headers, Payload)> {
    let mut out = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            let key = format!("key-{k}");
            out.push((
                Headers { key: key.clone() },
                Payload {
                    key,
                    seq,
                    filler: String::new(),
                },
            ));
        }
    }
    out
}

/// Publishes in transactions of `batch` messages; returns the ids in order.
pub async fn publish(
    store: &InMemoryOutbox,
    messages: Vec<(Headers, Payload)>,
    batch: usize,
) -> Vec<MessageId> {
    let outbox = Outbox::new(store.clone());
    let mut ids = Vec::new();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let chunk: Vec<_> = messages.by_ref().take(batch).collect();
        let mut tx = store.begin();
        outbox
            .publish_messages(chunk, &mut tx)
            .await
            .expect("publish");
        ids.extend(tx.commit());
    }
    ids
}

/// `amqp://user:password@host:port/vhost`, with the vhost percent-decoded
/// (amqprs takes it as written).
fn connection_arguments(url: &str) -> OpenConnectionArguments {
    let rest = url
        .strip_prefix("amqp://")
        .expect("AMQP_URL starts with amqp://");
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, address) = authority
        .rsplit_once('@')
        .unwrap_or(("guest:guest", authority));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host, port) = address.split_once(':').unwrap_or((address, "5672"));
    let vhost = if vhost.is_empty() {
        "/".to_owned()
    } else {
        vhost.replace("%2f", "/").replace("%2F", "/")
    };
    let mut args = OpenConnectionArguments::new(host, port.parse().expect("port"), user, password);
    args.virtual_host(&vhost);
    args
}

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: Option<String>,
    pub routing_key: String,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub timestamp: Option<u64>,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn payload(&self) -> Payload {
        serde_json::from_slice(&self.body).expect("payload json")
    }

    pub fn id(&self) -> i64 {
        self.message_id
            .as_deref()
            .expect("message_id")
            .parse()
            .expect("numeric message_id")
    }
}

/// A connection of the test's own, for declaring and reading back.
pub struct Broker {
    connection: Connection,
    channel: Channel,
}

/// An exchange and a queue bound to it, both named for one test.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

impl Broker {
    pub async fn connect() -> Self {
        let args = connection_arguments(&amqp_url());
        let connection = Connection::open(&args).await.expect("amqprs connects");
        let channel = connection.open_channel(None).await.expect("amqprs channel");
        Self {
            connection,
            channel,
        }
    }

    /// A direct exchange and a queue bound with `routing_key`. The queue
    /// expires ten minutes after its last use, and the exchange (auto-delete)
    /// goes with its last binding, in case a test stops before `delete`.
    pub async fn topology(&self, name: &str, routing_key: &str) -> Topology {
        let exchange = unique(&format!("{name}-x"));
        let queue = unique(&format!("{name}-q"));
        let declare = ExchangeDeclareArguments::new(&exchange, "direct")
            .auto_delete(true)
            .finish();
        self.channel
            .exchange_declare(declare)
            .await
            .expect("exchange declare");
        let mut arguments = FieldTable::new();
        let expires = FieldName::try_from("x-expires").expect("field name");
        arguments.insert(expires, FieldValue::I(600_000));
        let declare = QueueDeclareArguments::new(&queue)
            .arguments(arguments)
            .finish();
        self.channel
            .queue_declare(declare)
            .await
            .expect("queue declare");
        let bind = QueueBindArguments::new(&queue, &exchange, routing_key);
        self.channel.queue_bind(bind).await.expect("queue bind");
        Topology {
            exchange,
            queue,
            routing_key: routing_key.to_owned(),
        }
    }

    /// Reads the queue until `want` messages arrived or nothing came for
    /// `idle`; returns what arrived.
    pub async fn read(&self, queue: &str, want: usize, idle: Duration) -> Vec<Received> {
        // A channel of its own, acking what it takes: closing it hands any
        // message delivered beyond `want` back to the queue.
        let channel = self
            .connection
            .open_channel(None)
            .await
            .expect("amqprs channel");
        let tag = unique("consumer");
        let args = BasicConsumeArguments::new(queue, &tag)
            .manual_ack(true)
            .finish();
        let (_tag, mut deliveries) = channel.basic_consume_rx(args).await.expect("consume");
        let mut received = Vec::new();
        while received.len() < want {
            let Ok(Some(message)) = tokio::time::timeout(idle, deliveries.recv()).await else {
                break;
            };
            let deliver = message.deliver.expect("deliver");
            let ack = BasicAckArguments::new(deliver.delivery_tag(), false);
            channel.basic_ack(ack).await.expect("ack");
            let properties = message.basic_properties.expect("properties");
            let headers = properties
                .headers()
                .map(|table| {
                    table
                        .as_ref()
                        .iter()
                        .map(|(name, value)| {
                            let text = match value {
                                FieldValue::S(text) => text.to_string(),
                                other => format!("{other:?}"),
                            };
                            (name.to_string(), text)
                        })
                        .collect()
                })
                .unwrap_or_default();
            received.push(Received {
                message_id: properties.message_id().cloned(),
                routing_key: deliver.routing_key().clone(),
                content_type: properties.content_type().cloned(),
                delivery_mode: properties.delivery_mode(),
                timestamp: properties.timestamp(),
                headers,
                body: message.content.unwrap_or_default(),
            });
        }
        let _ = channel.close().await;
        received
    }

    pub async fn delete(&self, topology: &Topology) {
        let _ = self
            .channel
            .queue_delete(QueueDeleteArguments::new(&topology.queue))
            .await;
        let _ = self
            .channel
            .exchange_delete(ExchangeDeleteArguments::new(&topology.exchange))
            .await;
    }

    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

/// Checks that every key's payloads arrive in sequence order, counting each
/// message id once (a redelivered duplicate repeats an id already seen).
/// Returns the number of duplicates.
pub fn check_order(received: &[Received]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<String, u32> = HashMap::new();
    let mut duplicates = 0;
    for message in received {
        let payload = message.payload();
        if !seen.insert(message.id()) {
            duplicates += 1;
            continue;
        }
        if let Some(previous) = last.insert(payload.key.clone(), payload.seq) {
            assert!(
                payload.seq > previous,
                "key {} went from seq {previous} to {} (message {})",
                payload.key,
                payload.seq,
                message.id()
            );
        }
    }
    duplicates
}
