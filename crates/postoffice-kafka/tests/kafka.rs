//! The Kafka transport against a real Kafka-protocol broker (`KAFKA_BROKERS`,
//! default 127.0.0.1:9092; `scripts/kafka.sh` starts tansu there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::retry::Backoff;
use postoffice_core::{JsonLayer, MessageId, Outbox, PartitionKey, Producer, Transport};
use postoffice_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use postoffice_kafka::rdkafka::client::DefaultClientContext;
use postoffice_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use postoffice_kafka::rdkafka::message::{Headers as _, Message as _};
use postoffice_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use postoffice_kafka::{Kafka, MESSAGE_ID_HEADER};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

const PARTITIONS: i32 = 3;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Headers {
    key: String,
    kind: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    seq: u32,
    #[serde(default)]
    filler: String,
}

/// Creates a topic of its own for one test; tansu does not create topics on
/// first produce.
async fn create_topic() -> String {
    let topic = random_name("postoffice-test");
    create_topic_named(&topic).await;
    topic
}

async fn create_topic_named(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &options)
        .await
        .unwrap_or_else(|error| panic!("creating topic {topic} on {} failed: {error}", brokers()));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name} failed: {code}"));
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    id: i64,
    seq: u32,
    headers: HashMap<String, String>,
}

/// Reads the topic from the beginning with a consumer of its own until
/// `distinct` different message ids arrived or `timeout` passed.
async fn read_back(topic: &str, distinct: usize, timeout: Duration) -> Vec<Record> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", random_name("postoffice-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();

    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    while ids.len() < distinct {
        let Ok(received) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let message = received.unwrap();
        let mut headers = HashMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(header.key.to_owned(), value.unwrap_or_default());
            }
        }
        let id = headers
            .get(MESSAGE_ID_HEADER)
            .and_then(|id| id.parse().ok())
            .unwrap_or(-1);
        let payload: Payload = serde_json::from_slice(message.payload().unwrap_or_default())
            .expect("payload is the JSON the outbox stored");
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        ids.insert(id);
        records.push(Record {
            key,
            id,
            seq: payload.seq,
            headers,
        });
    }
    records
}

/// Publishes `per_key` messages for each of `keys` keys, interleaved, in
/// transactions of 500; returns the ids by (key, seq).
async fn publish(
    store: &InMemoryOutbox,
    keys: usize,
    per_key: u32,
    seq_from: u32,
) -> HashMap<(String, u32), MessageId> {
    let outbox = Outbox::new(store.clone());
    let all: Vec<(Headers, Payload)> = (seq_from..seq_from + per_key)
        .flat_map(|seq| {
            (0..keys).map(move |k| {
                let headers = Headers {
                    key: format!("key-{k:02}"),
                    kind: "test".to_owned(),
                };
                (
                    headers,
                    Payload {
                        seq,
                        filler: String::new(),
                    },
                )
            })
        })
        .collect();
    let mut ids = HashMap::new();
    for chunk in all.chunks(500) {
        let mut tx = store.begin();
        outbox
            .publish_messages(chunk.iter().cloned(), &mut tx)
            .await
            .unwrap();
        for ((headers, payload), id) in chunk.iter().zip(tx.commit()) {
            ids.insert((headers.key.clone(), payload.seq), id);
        }
    }
    ids
}

/// Checks that every published message arrived with its id, that the first
/// arrival of each message is in publish order per key, and returns how many
/// duplicates were read.
fn check(records: &[Record], published: &HashMap<(String, u32), MessageId>) -> usize {
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<&str, u32> = HashMap::new();
    for record in records {
        let expected = published.get(&(record.key.clone(), record.seq));
        let expected = expected.unwrap_or_else(|| panic!("unexpected record {record:?}"));
        assert_eq!(record.id, expected.get(), "message-id header of {record:?}");
        assert_eq!(
            record.headers.get("key"),
            Some(&record.key),
            "user header copied"
        );
        assert_eq!(
            record.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        if !seen.insert(record.id) {
            continue;
        }
        if let Some(last) = last_per_key.insert(&record.key, record.seq) {
            assert!(
                record.seq > last,
                "key {} went from seq {last} to {} (first arrivals out of order)",
                record.key,
                record.seq
            );
        }
    }
    let missing: Vec<_> = published
        .iter()
        .filter(|(_, id)| !seen.contains(&id.get()))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages never arrived, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    records.len() - seen.len()
}

fn kafka(topic: &str) -> postoffice_kafka::KafkaBuilder {
    Kafka::builder(brokers()).topic(topic).set("linger.ms", "5")
}

fn start(
    store: &InMemoryOutbox,
    kafka: &Kafka,
    token: &CancellationToken,
) -> JoinHandle<Result<(), postoffice_core::ProducerError>> {
    let transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(kafka.clone()),
    );
    let producer = Producer::new(store.poller::<Headers, Payload>(), transport)
        .batch_size(500)
        .in_flight_per_partition(64)
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ));
    tokio::spawn(producer.run(token.clone()))
}

async fn wait_drained(store: &InMemoryOutbox, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while store.pending() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} messages still pending after {timeout:?}",
            store.pending()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_key_order_with_ids() {
    let topic = create_topic().await;
    let store = InMemoryOutbox::default();
    let published = publish(&store, 20, 500, 0).await;
    assert_eq!(published.len(), 10_000);

    let kafka = kafka(&topic).build().unwrap();
    let token = CancellationToken::new();
    let started = std::time::Instant::now();
    let relay = start(&store, &kafka, &token);
    wait_drained(&store, Duration::from_secs(120)).await;
    let relayed_in = started.elapsed();
    token.cancel();
    relay.await.unwrap().unwrap();
    kafka.flush(Duration::from_secs(10)).await.unwrap();

    let records = read_back(&topic, published.len(), Duration::from_secs(60)).await;
    let duplicates = check(&records, &published);
    eprintln!(
        "10k test: relayed in {relayed_in:?}, {} records read, {duplicates} duplicates",
        records.len()
    );
    assert!(store.dead_letters().is_empty());
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The acceptance run: 10k messages over 20 keys, published to Postgres in
/// transactions of 500 and relayed by the Postgres poller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_postgres_arrive_in_key_order_with_ids() {
    use postoffice_sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller};
    use sqlx::AssertSqlSafe;

    let topic = create_topic().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url())
        .await
        .unwrap();
    let schema = random_name("kafka").replace('-', "_");
    let create = format!("create schema {schema}");
    sqlx::raw_sql(AssertSqlSafe(create))
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

    let keys = 20;
    let per_key = 500_u32;
    let all: Vec<(Headers, Payload)> = (0..per_key)
        .flat_map(|seq| {
            (0..keys).map(move |k| {
                let headers = Headers {
                    key: format!("key-{k:02}"),
                    kind: "test".to_owned(),
                };
                (
                    headers,
                    Payload {
                        seq,
                        filler: String::new(),
                    },
                )
            })
        })
        .collect();
    for chunk in all.chunks(500) {
        let mut tx = pool.begin().await.unwrap();
        outbox
            .publish_messages(chunk.iter().cloned(), &mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    let poller = PgSqlxOutboxPoller::<Headers, Payload>::builder(pool.clone())
        .schema(&schema)
        .build()
        .await
        .unwrap();
    let kafka = kafka(&topic).build().unwrap();
    let transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .service(kafka.clone()),
    );
    let producer = Producer::new(poller, transport)
        .batch_size(500)
        .in_flight_per_partition(64);
    let token = CancellationToken::new();
    let started = std::time::Instant::now();
    let relay = tokio::spawn(producer.run(token.clone()));

    let records = read_back(&topic, all.len(), Duration::from_secs(180)).await;
    let relayed_in = started.elapsed();
    token.cancel();
    relay.await.unwrap().unwrap();
    kafka.flush(Duration::from_secs(10)).await.unwrap();

    // Ids are assigned in publish order, so per key they grow with seq; the
    // first arrivals of a key are seq 0, 1, 2, ... without a gap.
    let mut ids: HashMap<(String, u32), i64> = HashMap::new();
    let mut last: HashMap<String, (u32, i64)> = HashMap::new();
    for record in &records {
        assert!(
            record.id > 0,
            "message-id header missing or not a number: {record:?}"
        );
        assert_eq!(record.headers.get("key"), Some(&record.key));
        if let Some(first) = ids.get(&(record.key.clone(), record.seq)) {
            assert_eq!(*first, record.id, "a duplicate keeps its id: {record:?}");
            continue;
        }
        ids.insert((record.key.clone(), record.seq), record.id);
        let expected = last.get(&record.key).map_or(0, |(seq, _)| seq + 1);
        assert_eq!(
            record.seq, expected,
            "first arrivals of {} in order",
            record.key
        );
        if let Some((_, id)) = last.insert(record.key.clone(), (record.seq, record.id)) {
            assert!(record.id > id, "ids grow with publish order: {record:?}");
        }
    }
    assert_eq!(ids.len(), all.len(), "every published message arrived");
    let pending: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "select count(*) from {schema}.postoffice_outbox"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!(
        "postgres 10k test: relayed in {relayed_in:?}, {} records read, {} duplicates, {pending} rows left",
        records.len(),
        records.len() - ids.len()
    );
    assert_eq!(pending, 0, "every delivered row was removed");
    let drop = format!("drop schema {schema} cascade");
    sqlx::raw_sql(AssertSqlSafe(drop))
        .execute(&pool)
        .await
        .unwrap();
}

/// The pid of the broker to freeze: the one in `TANSU_PID_FILE` when set, else
/// the local process listening on the broker port (as `ss` reports it), else
/// the one in the pid file `scripts/kafka.sh` writes.
fn broker_pid() -> u32 {
    if let Ok(file) = std::env::var("TANSU_PID_FILE") {
        return read_pid(&file)
            .unwrap_or_else(|| panic!("TANSU_PID_FILE={file} holds no live pid to freeze"));
    }
    let first = brokers().split(',').next().unwrap_or_default().to_owned();
    let (host, port) = first.rsplit_once(':').unwrap_or((first.as_str(), "9092"));
    assert!(
        ["127.0.0.1", "localhost", "[::1]"].contains(&host),
        "the freeze test stops the broker process, but KAFKA_BROKERS={} is not local; \
         set TANSU_PID_FILE to a file holding the pid of a broker this machine can freeze",
        brokers()
    );
    if let Some(pid) = listening_pid(port) {
        return pid;
    }
    let cache = std::env::var("POSTOFFICE_CACHE").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
        let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
        format!("{base}/postoffice")
    });
    let file = format!("{cache}/tansu.pid");
    read_pid(&file).unwrap_or_else(|| {
        panic!(
            "the freeze test needs the broker's pid: `ss` shows no process listening on port \
             {port} and {file} holds no live pid (start the broker with scripts/kafka.sh or \
             set TANSU_PID_FILE)"
        )
    })
}

fn read_pid(file: &str) -> Option<u32> {
    let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn listening_pid(port: &str) -> Option<u32> {
    let filter = format!("sport = :{port}");
    let out = std::process::Command::new("ss")
        .args(["-ltnpH", &filter])
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = listing.split("pid=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill {signal} {pid} failed"
    );
}

/// Resumes the broker even when the test fails while it is frozen.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_loses_nothing_and_keeps_key_order() {
    let pid = broker_pid();
    let topic = create_topic().await;
    let store = InMemoryOutbox::default();
    let kafka = kafka(&topic)
        .message_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let relay = start(&store, &kafka, &token);

    let mut published = publish(&store, 10, 100, 0).await;
    wait_drained(&store, Duration::from_secs(60)).await;

    // Freeze the broker for twice the message timeout while messages keep
    // coming, so that sends time out mid-stream.
    signal(pid, "-STOP");
    let thaw = Thaw(pid);
    published.extend(publish(&store, 10, 100, 100).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    published.extend(publish(&store, 10, 100, 200).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending_while_frozen = store.pending();
    drop(thaw);

    published.extend(publish(&store, 10, 100, 300).await);
    wait_drained(&store, Duration::from_secs(120)).await;
    assert!(
        !relay.is_finished(),
        "the relay kept running through the freeze"
    );
    token.cancel();
    relay.await.unwrap().unwrap();
    kafka.flush(Duration::from_secs(10)).await.unwrap();

    let records = read_back(&topic, published.len(), Duration::from_secs(60)).await;
    let duplicates = check(&records, &published);
    eprintln!(
        "freeze test: {pending_while_frozen} pending at thaw, {} records read, {duplicates} duplicates",
        records.len()
    );
    assert!(pending_while_frozen > 0, "the freeze held messages back");
    let dead = store.dead_letters();
    assert!(
        dead.is_empty(),
        "timeouts are retried, not set aside: {dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_set_aside_and_its_neighbours_flow() {
    let topic = create_topic().await;
    let store = InMemoryOutbox::default();
    let outbox = Outbox::new(store.clone());
    let mut published = HashMap::new();
    let mut big_id = None;
    let mut tx = store.begin();
    let mut staged = Vec::new();
    for seq in 0..30_u32 {
        for k in 0..3 {
            let headers = Headers {
                key: format!("key-{k:02}"),
                kind: "test".to_owned(),
            };
            let filler = if k == 1 && seq == 15 {
                "x".repeat(50_000)
            } else {
                String::new()
            };
            staged.push((headers, Payload { seq, filler }));
        }
    }
    outbox
        .publish_messages(staged.iter().cloned(), &mut tx)
        .await
        .unwrap();
    for ((headers, payload), id) in staged.iter().zip(tx.commit()) {
        if payload.filler.is_empty() {
            published.insert((headers.key.clone(), payload.seq), id);
        } else {
            big_id = Some(id);
        }
    }
    let big_id = big_id.unwrap();

    let kafka = kafka(&topic)
        .set("message.max.bytes", "10000")
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let relay = start(&store, &kafka, &token);
    wait_drained(&store, Duration::from_secs(60)).await;
    token.cancel();
    relay.await.unwrap().unwrap();

    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1, "one message set aside: {dead:?}");
    assert_eq!(dead[0].id, big_id);
    assert_eq!(dead[0].attempts, 0, "no retry for a permanent failure");
    assert!(
        dead[0].reason.contains("permanent"),
        "reason: {}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("too large"),
        "reason: {}",
        dead[0].reason
    );

    let records = read_back(&topic, published.len(), Duration::from_secs(60)).await;
    check(&records, &published);
}

/// Both limits are local, so this talks to a broker address where nothing
/// listens: nothing is ever confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_a_missing_report_are_retryable_errors() {
    use postoffice_core::{EncodedMessage, Message, is_permanent};
    use postoffice_kafka::ProduceError;
    use tower::{Service, ServiceExt};

    let mut kafka = Kafka::builder("127.0.0.1:1")
        .topic("nowhere")
        .set("queue.buffering.max.messages", "10")
        .queue_timeout(Duration::from_millis(300))
        .message_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let encode = |seq: u32| {
        let headers = serde_json::json!({ "key": "a" });
        let message = Message::new(
            MessageId::new(i64::from(seq) + 1),
            b"a".to_vec(),
            0,
            headers.clone(),
            serde_json::json!({ "seq": seq }),
            0,
            chrono::Utc::now(),
            None,
        );
        EncodedMessage::new(message.meta(), headers, "application/json", b"{}".to_vec())
    };

    // Nine tenths of librdkafka's queue limit fit; the next send waits for
    // room and gives up after the queue timeout.
    let mut sends = Vec::new();
    for seq in 0..9 {
        let ready = kafka.ready().await.unwrap();
        sends.push(ready.call(encode(seq)));
    }
    let full = kafka.ready().await.map(|_| ()).unwrap_err();
    assert!(!full.is_permanent(), "a full queue is retryable");
    let source = std::error::Error::source(&full).unwrap();
    assert!(
        matches!(
            source.downcast_ref::<ProduceError>(),
            Some(ProduceError::QueueFull { .. })
        ),
        "{full:?}"
    );

    // Without a broker no report comes; each send fails at the deadline.
    for send in sends {
        let error = send.await.unwrap_err();
        assert!(!is_permanent(&error), "a timeout is retryable");
        let source = std::error::Error::source(&error).unwrap();
        assert!(
            matches!(
                source.downcast_ref::<ProduceError>(),
                Some(ProduceError::Timeout { .. })
            ),
            "{error:?}"
        );
    }
}

/// A message in the shape the relay sends, for calling the service directly.
fn encoded(id: i64, body: &str) -> postoffice_core::EncodedMessage {
    use postoffice_core::{EncodedMessage, Message};
    let headers = serde_json::json!({ "key": "a" });
    let message = Message::new(
        MessageId::new(id),
        b"a".to_vec(),
        0,
        headers.clone(),
        serde_json::json!({}),
        0,
        chrono::Utc::now(),
        None,
    );
    EncodedMessage::new(
        message.meta(),
        headers,
        "application/json",
        body.as_bytes().to_vec(),
    )
}

/// F10: a send that timed out leaves its record in librdkafka (which never
/// expires it); sending the same message again must wait for that record, not
/// queue one more copy per retry. Nothing listens on the broker address, so
/// every record stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_queued_record_waits_for_it_instead_of_queueing_a_copy() {
    use postoffice_core::is_permanent;
    use postoffice_kafka::ProduceError;
    use tower::{Service, ServiceExt};

    let mut kafka = Kafka::builder("127.0.0.1:1")
        .topic("nowhere")
        .message_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    for attempt in 0..4 {
        let send = kafka.ready().await.unwrap().call(encoded(7, "{\"n\":1}"));
        let error = send.await.unwrap_err();
        assert!(!is_permanent(&error), "a timeout is retryable");
        let source = std::error::Error::source(&error).unwrap();
        assert!(
            matches!(
                source.downcast_ref::<ProduceError>(),
                Some(ProduceError::Timeout { topic, .. }) if topic == "nowhere"
            ),
            "{error:?}"
        );
        let text = source.to_string();
        assert!(
            text.contains("topic nowhere") && text.contains("stays queued"),
            "the timeout says what is known: {text}"
        );
        assert_eq!(kafka.pending(), 1, "attempt {attempt} queued no copy");
    }

    // Two sends of the message at once share the record too.
    let first = kafka.ready().await.unwrap().call(encoded(7, "{\"n\":1}"));
    let second = kafka.ready().await.unwrap().call(encoded(7, "{\"n\":1}"));
    assert_eq!(kafka.pending(), 1);
    let (first, second) = tokio::join!(first, second);
    assert!(first.is_err() && second.is_err());

    // Another message under the same id (another outbox sharing the
    // producer, or an id handed out again) is a record of its own, and so is
    // another id.
    let other_body = kafka.ready().await.unwrap().call(encoded(7, "{\"n\":2}"));
    assert_eq!(kafka.pending(), 2, "same id, other body: queued");
    let other_id = kafka.ready().await.unwrap().call(encoded(8, "{\"n\":1}"));
    assert_eq!(kafka.pending(), 3, "other id: queued");
    assert!(other_body.await.is_err());
    assert!(other_id.await.is_err());
    assert_eq!(kafka.pending(), 3);
}

/// F10 end to end: the relay keeps retrying a message whose topic does not
/// exist yet (tansu does not create topics on produce), each send failing at
/// the 1 s message timeout; when the topic appears, the record that stayed
/// queued the whole time is delivered and the row removed.
///
/// At most two copies may arrive: the record queued first, and one more if
/// its delivery report came while no send was waiting for it (the last one
/// had timed out and the next retry was in its backoff); that retry then
/// finds no queued record and sends a copy to the now existing topic. Before
/// the fix every retry queued a copy, six or more in this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_the_topic_is_missing_deliver_the_message_at_most_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let topic = random_name("postoffice-late");
    let store = InMemoryOutbox::default();
    let published = publish(&store, 1, 1, 0).await;
    let id = published[&("key-00".to_owned(), 0)];

    let kafka = kafka(&topic)
        .message_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let transport = Transport::new(
        ServiceBuilder::new()
            .layer(JsonLayer::new())
            .map_request(move |message| {
                counted.fetch_add(1, Ordering::Relaxed);
                message
            })
            .service(kafka.clone()),
    );
    let producer = Producer::new(store.poller::<Headers, Payload>(), transport).backoff(
        Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    tokio::time::sleep(Duration::from_secs(6)).await;
    let sends = calls.load(Ordering::Relaxed);
    assert!(
        sends >= 4,
        "the relay retried while the topic was missing: {sends} sends"
    );
    assert_eq!(store.pending(), 1, "nothing could be delivered yet");
    assert_eq!(
        kafka.pending(),
        1,
        "{sends} sends queued one record in librdkafka"
    );

    create_topic_named(&topic).await;
    wait_drained(&store, Duration::from_secs(60)).await;
    token.cancel();
    relay.await.unwrap().unwrap();
    kafka.flush(Duration::from_secs(10)).await.unwrap();
    assert!(store.dead_letters().is_empty());

    // Asks for two distinct ids where there is one, so it reads until the
    // timeout and counts every copy, not just the first.
    let records = read_back(&topic, 2, Duration::from_secs(5)).await;
    eprintln!(
        "missing topic test: {sends} sends before the topic existed, {} records read",
        records.len()
    );
    assert!(
        records.iter().all(|record| record.id == id.get()),
        "{records:?}"
    );
    assert!(
        (1..=2).contains(&records.len()),
        "{} copies of one message arrived after {sends} sends",
        records.len()
    );
}
