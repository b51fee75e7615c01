//! The relay on the in-memory path: atomicity, per-key order under latency
//! and concurrency, partition isolation on failure, bounded shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::retry::Backoff;
use postoffice_core::transport::InMemory;
use postoffice_core::{
    BoxError, EncodedMessage, JsonLayer, Message, Outbox, PartitionKey, Producer, SendError,
    Transport,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Headers {
    key: String,
    seq: u32,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

type Msg = Message<Headers, String>;

async fn publish(store: &InMemoryOutbox, keys: usize, per_key: u32) {
    let outbox = Outbox::new(store.clone());
    for seq in 0..per_key {
        let mut tx = store.begin();
        let batch = (0..keys).map(|k| {
            (
                Headers {
                    key: format!("key-{k}"),
                    seq,
                },
                format!("p{seq}"),
            )
        });
        outbox
            .publish_messages(batch, &mut tx)
            .await
            .expect("publish");
        tx.commit();
    }
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
}

#[tokio::test]
async fn rollback_publishes_nothing() {
    let store = InMemoryOutbox::default();
    let outbox = Outbox::new(store.clone());
    let mut tx = store.begin();
    let batch = [(
        Headers {
            key: "a".into(),
            seq: 0,
        },
        "x".to_owned(),
    )];
    outbox
        .publish_messages(batch, &mut tx)
        .await
        .expect("publish");
    tx.rollback();

    let received: InMemory<Msg> = InMemory::default();
    let token = CancellationToken::new();
    let producer = Producer::new(
        store.poller::<Headers, String>(),
        Transport::new(received.clone()),
    );
    let relay = tokio::spawn(producer.run(token.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    relay.await.expect("join").expect("run");
    assert!(received.is_empty());
    assert_eq!(store.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_under_random_latency_and_concurrency() {
    let store = InMemoryOutbox::default();
    publish(&store, 10, 100).await;

    let received: InMemory<EncodedMessage> = InMemory::default();
    let sink = received.clone();
    let jittery = tower::service_fn(move |message: EncodedMessage| {
        let sink = sink.clone();
        async move {
            let delay = rand::rng().random_range(0..3_000);
            tokio::time::sleep(Duration::from_micros(delay)).await;
            sink.oneshot(message).await
        }
    });
    let transport = Transport::new(
        ServiceBuilder::new()
            .concurrency_limit(4)
            .layer(JsonLayer::new())
            .service(jittery),
    );
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), transport).batch_size(7);
    let relay = tokio::spawn(producer.run(token.clone()));

    let got = received
        .wait_for(1000, Duration::from_secs(60))
        .await
        .expect("all 1000 arrive");
    token.cancel();
    relay.await.expect("join").expect("run");

    let mut last: HashMap<String, i64> = HashMap::new();
    for message in &got {
        let key = message.headers["key"].as_str().expect("key").to_owned();
        let seq = message.headers["seq"].as_i64().expect("seq");
        let previous = last.insert(key.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, previous + 1, "key {key} out of order");
        assert_eq!(message.content_type, "application/json");
    }
    assert_eq!(last.len(), 10);
    assert_eq!(store.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partition_stops_alone() {
    let store = InMemoryOutbox::with_partitions(64);
    publish(&store, 10, 20).await;
    let bad_key = "key-3";

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&failures);
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        let counted = Arc::clone(&counted);
        async move {
            if message.headers.key == bad_key {
                counted.fetch_add(1, Ordering::Relaxed);
                return Err::<(), BoxError>(SendError::retryable("broker said no").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport))
        .backoff(fast_backoff());
    let relay = tokio::spawn(producer.run(token.clone()));

    let got = received
        .wait_for(180, Duration::from_secs(30))
        .await
        .expect("others arrive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    relay.await.expect("join").expect("run");

    assert!(got.iter().all(|m| m.headers.key != bad_key));
    assert_eq!(received.len(), 180);
    assert_eq!(
        store.pending(),
        20,
        "the failing key keeps all its messages"
    );
    assert!(
        failures.load(Ordering::Relaxed) >= 2,
        "the failing message was retried"
    );
    assert!(store.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_set_aside_and_the_key_goes_on() {
    let store = InMemoryOutbox::default();
    publish(&store, 2, 5).await;

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            if message.headers.key == "key-0" && message.headers.seq == 2 {
                return Err::<(), BoxError>(SendError::permanent("too large").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport));
    let relay = tokio::spawn(producer.run(token.clone()));
    received
        .wait_for(9, Duration::from_secs(10))
        .await
        .expect("the rest arrives");
    token.cancel();
    relay.await.expect("join").expect("run");

    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("too large"), "{}", dead[0].reason);
    assert_eq!(store.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_returns_within_the_grace_and_removes_nothing_unconfirmed() {
    let store = InMemoryOutbox::default();
    publish(&store, 4, 10).await;
    let slow_key = "key-1";

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            if message.headers.key == slow_key {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            sink.oneshot(message).await
        }
    });
    let grace = Duration::from_millis(500);
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport))
        .shutdown_grace(grace);
    let relay = tokio::spawn(producer.run(token.clone()));
    received
        .wait_for(30, Duration::from_secs(10))
        .await
        .expect("fast keys arrive");

    let started = tokio::time::Instant::now();
    token.cancel();
    relay.await.expect("join").expect("run");
    let took = started.elapsed();

    assert!(
        took <= grace + Duration::from_millis(250),
        "shutdown took {took:?}"
    );
    assert_eq!(received.len(), 30);
    assert_eq!(
        store.pending(),
        10,
        "the slow key's unconfirmed messages stay"
    );
    assert_eq!(store.delivered(), 30);
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_writes_nothing() {
    let store = InMemoryOutbox::default();
    let outbox = Outbox::new(store.clone());
    let mut tx = store.begin();
    let batch = [
        (
            Headers {
                key: "a".into(),
                seq: 0,
            },
            "fine".to_owned(),
        ),
        (
            Headers {
                key: "a".into(),
                seq: 1,
            },
            "nul \0 inside".to_owned(),
        ),
    ];
    let error = outbox
        .publish_messages(batch, &mut tx)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            postoffice_core::PublishError::NulCharacter {
                index: 1,
                field: "payload"
            }
        ),
        "{error:?}"
    );
    assert_eq!(tx.staged(), 0, "nothing of the call is staged");
    tx.commit();
    assert_eq!(store.pending(), 0);
}

#[tokio::test]
async fn undecodable_rows_are_set_aside_and_the_rest_flows() {
    let store = InMemoryOutbox::default();
    store.insert_raw(b"a", r#"{"key":"a","seq":"not a number"}"#, r#""x""#);
    publish(&store, 1, 3).await;
    let received: InMemory<Msg> = InMemory::default();
    let token = CancellationToken::new();
    let producer = Producer::new(
        store.poller::<Headers, String>(),
        Transport::new(received.clone()),
    );
    let relay = tokio::spawn(producer.run(token.clone()));
    received
        .wait_for(3, Duration::from_secs(10))
        .await
        .expect("the rest arrives");
    token.cancel();
    relay.await.expect("join").expect("run");
    assert_eq!(store.dead_letters().len(), 1);
    assert_eq!(store.pending(), 0);
}

/// A transport that refuses `seq == 2` of `key-0` for good while `refuse` is
/// set, and records everything else.
fn poison_transport(
    received: InMemory<Msg>,
    refuse: Arc<std::sync::atomic::AtomicBool>,
) -> impl tower::Service<Msg, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |message: Msg| {
        let sink = received.clone();
        let refuse = Arc::clone(&refuse);
        async move {
            let poison = message.headers.key == "key-0" && message.headers.seq == 2;
            if poison && refuse.load(Ordering::SeqCst) {
                return Err::<(), BoxError>(SendError::permanent("refused for good").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_holds_the_partition_until_replay_and_replay_keeps_order() {
    use postoffice_core::DeadLetterPolicy;
    use std::sync::atomic::AtomicBool;

    let store = InMemoryOutbox::with_options(16, DeadLetterPolicy::Block);
    publish(&store, 2, 5).await;
    let received: InMemory<Msg> = InMemory::default();
    let refuse = Arc::new(AtomicBool::new(true));
    let transport = poison_transport(received.clone(), Arc::clone(&refuse));
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport));
    let relay = tokio::spawn(producer.run(token.clone()));

    // key-1 flows entirely; key-0 stops before its poison message.
    received
        .wait_for(7, Duration::from_secs(10))
        .await
        .expect("7 arrive");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.len(), 7, "key-0 is held after the poison message");
    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(store.pending(), 2, "key-0 seq 3 and 4 wait");

    refuse.store(false, Ordering::SeqCst);
    assert_eq!(store.replay(&[dead[0].id]), 1);
    let got = received
        .wait_for(10, Duration::from_secs(10))
        .await
        .expect("all arrive");
    token.cancel();
    relay.await.expect("join").expect("run");

    let key0: Vec<u32> = got
        .iter()
        .filter(|m| m.headers.key == "key-0")
        .map(|m| m.headers.seq)
        .collect();
    assert_eq!(
        key0,
        [0, 1, 2, 3, 4],
        "replay puts the message back in its original place"
    );
    assert!(store.dead_letters().is_empty());
}

#[tokio::test]
async fn purge_drops_dead_letters() {
    let store = InMemoryOutbox::default();
    let id = store.insert_raw(b"a", "not json", "1");
    let poller = store.poller::<Headers, String>();
    let fetched = poller
        .oneshot(postoffice_core::poller::Fetch::new(vec![], 10))
        .await
        .unwrap();
    assert!(fetched.is_empty());
    assert_eq!(store.dead_letters().len(), 1);
    assert_eq!(store.purge(&[id]), 1);
    assert!(store.dead_letters().is_empty());
    assert_eq!(store.pending(), 0);
}

/// Checks each key's sequence: every message follows the one before it, or
/// repeats an earlier one (a duplicate after a failure), never skips ahead.
fn assert_no_gaps(got: &[Msg], keys: usize, per_key: u32) {
    let mut next: HashMap<String, u32> = HashMap::new();
    for message in got {
        let expected = next.entry(message.headers.key.clone()).or_insert(0);
        assert!(
            message.headers.seq <= *expected,
            "key {} skipped from {} to {}",
            message.headers.key,
            expected,
            message.headers.seq
        );
        if message.headers.seq == *expected {
            *expected += 1;
        }
    }
    assert_eq!(next.len(), keys);
    assert!(next.values().all(|n| *n == per_key), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_keeps_order_through_failures_and_permanent_refusals() {
    let store = InMemoryOutbox::with_partitions(4);
    publish(&store, 8, 60).await;

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            let roll = rand::rng().random_range(0..100);
            tokio::time::sleep(Duration::from_micros(roll * 20)).await;
            if message.headers.key == "key-5" && message.headers.seq == 30 {
                return Err::<(), BoxError>(SendError::permanent("refused").into());
            }
            if roll < 4 {
                return Err::<(), BoxError>(SendError::retryable("flaky").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport))
        .batch_size(5)
        .backoff(fast_backoff())
        .read_ahead(Some(Duration::from_secs(10)));
    let relay = tokio::spawn(producer.run(token.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    relay.await.expect("join").expect("run");

    assert_eq!(store.pending(), 0);
    assert_eq!(store.dead_letters().len(), 1);
    let mut got = received.messages();
    // The refused message never arrives; count it as sent for the check.
    let refused = got
        .iter()
        .position(|m| m.headers.key == "key-5" && m.headers.seq == 31)
        .expect("key-5 goes on after the refused message");
    let mut stand_in = got[refused].clone();
    stand_in.headers.seq = 30;
    got.insert(refused, stand_in);
    assert_no_gaps(&got, 8, 60);
}

/// A poller whose answers take a few milliseconds, like a database's.
#[derive(Clone)]
struct Slow<S>(S);

impl<S, R> tower::Service<R> for Slow<S>
where
    S: tower::Service<R, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            answer.await
        })
    }
}

/// A batch read ahead must be dropped when the batch before it fails, even
/// when the failed partition's backoff is over before the read comes back
/// (found by the fault-injection suite's flaky-transport scenario).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_ahead_is_dropped_when_the_batch_before_it_fails() {
    let store = InMemoryOutbox::with_partitions(4);
    publish(&store, 8, 100).await;

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            if rand::rng().random_range(0..100) < 20 {
                return Err::<(), BoxError>(SendError::retryable("flaky").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(
        Slow(store.poller::<Headers, String>()),
        Transport::new(transport),
    )
    .batch_size(10)
    .in_flight_per_partition(4)
    .backoff(Backoff::new(
        Duration::from_micros(100),
        Duration::from_micros(200),
    ));
    let relay = tokio::spawn(producer.run(token.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    relay.await.expect("join").expect("run");

    assert_eq!(store.pending(), 0);
    assert_no_gaps(&received.messages(), 8, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_starts_no_new_sends() {
    let store = InMemoryOutbox::with_partitions(1);
    publish(&store, 1, 50).await;

    let started = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&started);
    let transport = tower::service_fn(move |_: Msg| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), BoxError>(())
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport))
        .batch_size(50)
        .shutdown_grace(Duration::from_secs(10));
    let relay = tokio::spawn(producer.run(token.clone()));
    tokio::time::sleep(Duration::from_millis(120)).await;
    token.cancel();
    let at_cancel = started.load(Ordering::SeqCst);
    relay.await.expect("join").expect("run");

    let total = started.load(Ordering::SeqCst);
    assert!(
        total <= at_cancel + 1,
        "{at_cancel} sends at cancel, {total} at the end"
    );
    assert_eq!(store.pending(), 50 - store.delivered() as usize);
    assert!(store.pending() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transport_fails_one_message_for_good() {
    let store = InMemoryOutbox::default();
    publish(&store, 2, 3).await;
    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            if message.headers.key == "key-1" && message.headers.seq == 1 {
                panic!("user code broke on this message");
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    });
    let token = CancellationToken::new();
    let producer = Producer::new(store.poller::<Headers, String>(), Transport::new(transport));
    let relay = tokio::spawn(producer.run(token.clone()));
    received
        .wait_for(5, Duration::from_secs(10))
        .await
        .expect("the rest arrives");
    token.cancel();
    relay.await.expect("join").expect("run");

    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("panicked"), "{}", dead[0].reason);
}

#[tokio::test]
async fn an_endless_grace_does_not_overflow() {
    let store = InMemoryOutbox::default();
    let token = CancellationToken::new();
    token.cancel();
    let received: InMemory<Msg> = InMemory::default();
    Producer::new(store.poller::<Headers, String>(), Transport::new(received))
        .shutdown_grace(Duration::MAX)
        .backoff(Backoff::new(Duration::from_millis(1), Duration::MAX))
        .run(token)
        .await
        .expect("run");
}

#[test]
fn reasons_never_hold_nul() {
    let error = SendError::retryable("broker said \0 no");
    let text = postoffice_core::error_chain(&error);
    assert!(!text.contains('\0'));
    assert!(text.contains("broker said \u{fffd} no"));
}
