//! The tests, generic over the store's [`Harness`]. [`conformance_tests!`]
//! turns each into a `#[tokio::test]`.
//!
//! [`conformance_tests!`]: crate::conformance_tests

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use postoffice_core::retry::Backoff;
use postoffice_core::transport::InMemory;
use postoffice_core::{
    BoxError, CancellationToken, DeadLetterPolicy, Producer, ProducerError, PublishError,
    SendError, Transport,
};
use postoffice_sqlx::DeletionMode;
use rand::Rng;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::{Harness, Msg, PollerOptions, StoreOptions, Unsupported, message};

/// How long a test waits for deliveries before it fails.
const DELIVERY: Duration = Duration::from_secs(30);

/// A producer running on a store's poller.
struct Relay {
    token: CancellationToken,
    handle: JoinHandle<Result<(), ProducerError>>,
}

impl Relay {
    fn start<H: Harness, T>(
        producer: Producer<H::Poller, T, crate::Headers, crate::Payload>,
    ) -> Self
    where
        T: postoffice_core::Sender<crate::Headers, crate::Payload>,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(producer.run(token.clone()));
        Self { token, handle }
    }

    async fn stop(self) {
        self.token.cancel();
        self.handle.await.expect("relay task").expect("relay run");
    }
}

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
}

/// Starts a producer with default settings recording into `received`.
async fn relay_into<H: Harness>(store: &H, received: &InMemory<Msg>) -> Relay {
    let poller = store
        .poller(PollerOptions::default())
        .await
        .expect("poller");
    Relay::start::<H, _>(Producer::new(poller, Transport::new(received.clone())))
}

/// Publishes `per_key` messages for each of `keys` keys, one transaction per
/// sequence number.
async fn publish_keys<H: Harness>(store: &H, keys: usize, per_key: u32) {
    for seq in 0..per_key {
        let mut tx = store.begin().await;
        let batch = (0..keys)
            .map(|k| message(&format!("key-{k}"), seq))
            .collect();
        store.publish(&mut tx, batch).await.expect("publish");
        store.commit(tx).await;
    }
}

/// The sequence numbers each key arrived with, in arrival order.
fn by_key(messages: &[Msg]) -> HashMap<String, Vec<u32>> {
    let mut keys: HashMap<String, Vec<u32>> = HashMap::new();
    for message in messages {
        keys.entry(message.headers.key.clone())
            .or_default()
            .push(message.headers.seq);
    }
    keys
}

/// Atomicity: a rolled-back publish leaves nothing, a committed one becomes
/// visible at commit, with its payloads intact.
pub async fn commit_is_visible_and_rollback_leaves_nothing<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;

    let mut tx = store.begin().await;
    let batch = vec![message("a", 0), message("b", 0)];
    store.publish(&mut tx, batch).await.expect("publish");
    store.rollback(tx).await;
    assert_eq!(store.pending().await, 0, "rollback leaves nothing");

    let mut tx = store.begin().await;
    let batch = vec![message("a", 1), message("a", 2), message("b", 1)];
    store.publish(&mut tx, batch).await.expect("publish");
    assert_eq!(store.pending().await, 0, "invisible before commit");
    store.commit(tx).await;
    assert_eq!(store.pending().await, 3, "visible at commit");

    let received = InMemory::default();
    let relay = relay_into(&store, &received).await;
    let got = received.wait_for(3, DELIVERY).await.expect("delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;

    assert_eq!(received.len(), 3, "the rolled-back messages never leave");
    let mut texts: Vec<String> = got.iter().map(|m| m.payload.text.clone()).collect();
    texts.sort();
    assert_eq!(texts, ["a-1", "a-2", "b-1"]);
    assert!(got.windows(2).all(|w| w[0].id != w[1].id), "ids are unique");
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// Per-key order across several keys, through the core producer with random
/// transport latency and concurrency.
pub async fn per_key_order_holds_across_keys<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    publish_keys(&store, 8, 25).await;

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let jittery = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            let delay = rand::rng().random_range(0..2_000);
            tokio::time::sleep(Duration::from_micros(delay)).await;
            sink.oneshot(message).await
        }
    });
    let transport = tower::ServiceBuilder::new()
        .concurrency_limit(4)
        .service(jittery);
    let poller = store
        .poller(PollerOptions::default())
        .await
        .expect("poller");
    let producer = Producer::new(poller, Transport::new(transport)).batch_size(7);
    let relay = Relay::start::<H, _>(producer);

    let got = received.wait_for(200, DELIVERY).await.expect("all arrive");
    relay.stop().await;

    let keys = by_key(&got);
    assert_eq!(keys.len(), 8);
    for (key, seqs) in keys {
        assert_eq!(seqs, (0..25).collect::<Vec<_>>(), "key {key} out of order");
    }
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// No skipped rows: a transaction that commits after the relay already
/// polled (and, where two writers can overlap, after a later transaction
/// committed and was delivered) is still delivered.
pub async fn a_late_commit_is_not_skipped<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    let received = InMemory::default();
    let relay = relay_into(&store, &received).await;

    let mut late = store.begin().await;
    store
        .publish(&mut late, vec![message("k", 0)])
        .await
        .expect("publish");

    if store.capabilities().concurrent_writers {
        let mut early = store.begin().await;
        store
            .publish(&mut early, vec![message("k", 1)])
            .await
            .expect("publish");
        store.commit(early).await;
        let got = received.wait_for(1, DELIVERY).await.expect("early arrives");
        assert_eq!(got[0].headers.seq, 1);
    } else {
        // One writer at a time: the relay polls while the late transaction
        // holds the write lock, and finds nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(received.is_empty());
    }

    store.commit(late).await;
    let expected = if store.capabilities().concurrent_writers {
        2
    } else {
        1
    };
    let got = received
        .wait_for(expected, DELIVERY)
        .await
        .expect("the late commit arrives");
    relay.stop().await;
    assert!(
        got.iter().any(|m| m.headers.seq == 0),
        "late message delivered"
    );
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// After a failure only the contiguous confirmed prefix is removed; the rest
/// stays pending and later goes out in order.
pub async fn only_the_confirmed_prefix_is_removed<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    let mut tx = store.begin().await;
    let batch = (0..5)
        .map(|seq| message("a", seq))
        .chain((0..3).map(|seq| message("b", seq)))
        .collect();
    store.publish(&mut tx, batch).await.expect("publish");
    store.commit(tx).await;

    let received: InMemory<Msg> = InMemory::default();
    let failing = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let transport = {
        let (sink, failing, failures) = (received.clone(), failing.clone(), failures.clone());
        tower::service_fn(move |message: Msg| {
            let (sink, failing, failures) = (sink.clone(), failing.clone(), failures.clone());
            async move {
                let third = message.headers.key == "a" && message.headers.seq == 2;
                if third && failing.load(Ordering::SeqCst) {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return Err::<(), BoxError>(SendError::retryable("broker down").into());
                }
                sink.oneshot(message).await.map_err(BoxError::from)
            }
        })
    };
    let poller = store
        .poller(PollerOptions::default())
        .await
        .expect("poller");
    let producer = Producer::new(poller, Transport::new(transport)).backoff(fast_backoff());
    let relay = Relay::start::<H, _>(producer);

    received.wait_for(5, DELIVERY).await.expect("prefix and b");
    while failures.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.len(), 5, "a stops at its third message");
    assert_eq!(
        store.pending().await,
        3,
        "a-2, a-3, a-4 stay; the prefix is gone"
    );

    failing.store(false, Ordering::SeqCst);
    let got = received.wait_for(8, DELIVERY).await.expect("the rest");
    relay.stop().await;
    let keys = by_key(&got);
    assert_eq!(keys["a"], [0, 1, 2, 3, 4]);
    assert_eq!(keys["b"], [0, 1, 2]);
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// Physical deletion: delivered rows are gone.
pub async fn physical_deletion_removes_delivered_rows<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    publish_keys(&store, 3, 4).await;
    let received = InMemory::default();
    let relay = relay_into(&store, &received).await;
    received.wait_for(12, DELIVERY).await.expect("delivered");
    relay.stop().await;
    assert_eq!(store.pending().await, 0);
    assert_eq!(store.stored().await, 0, "no row kept");
    store.cleanup().await;
}

/// Logical deletion: delivered rows are kept, no longer pending, and the
/// purge removes them. A store without it refuses the option.
pub async fn logical_deletion_keeps_rows_until_purged<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    let options = PollerOptions {
        deletion: DeletionMode::Logical,
        ..PollerOptions::default()
    };
    if !store.capabilities().logical_deletion {
        assert!(matches!(store.poller(options).await, Err(Unsupported(_))));
        assert!(matches!(store.purge_delivered().await, Err(Unsupported(_))));
        store.cleanup().await;
        return;
    }

    publish_keys(&store, 3, 4).await;
    let poller = store.poller(options).await.expect("logical poller");
    let received = InMemory::default();
    let relay = Relay::start::<H, _>(Producer::new(poller, Transport::new(received.clone())));
    received.wait_for(12, DELIVERY).await.expect("delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    assert_eq!(received.len(), 12, "a delivered row is not sent again");
    assert_eq!(store.pending().await, 0);
    assert_eq!(store.stored().await, 12, "delivered rows are kept");

    assert_eq!(store.purge_delivered().await, Ok(12));
    assert_eq!(store.stored().await, 0);
    store.cleanup().await;
}

/// Bad input: a NUL character is a typed error and nothing of the call is
/// written; the transaction stays usable.
pub async fn a_nul_character_is_a_typed_error_and_writes_nothing<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    let mut tx = store.begin().await;
    let mut bad = message("a", 1);
    bad.1.text = "nul \0 inside".into();
    let error = store
        .publish(&mut tx, vec![message("a", 0), bad])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            PublishError::NulCharacter {
                index: 1,
                field: "payload"
            }
        ),
        "{error:?}"
    );
    let mut bad = message("a\0b", 0);
    bad.0.key = "a\0b".into();
    let error = store
        .publish(&mut tx, vec![bad])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            PublishError::NulCharacter {
                index: 0,
                field: "headers"
            }
        ),
        "{error:?}"
    );
    store
        .publish(&mut tx, vec![message("c", 0)])
        .await
        .expect("the transaction stays usable");
    store.commit(tx).await;
    assert_eq!(store.pending().await, 1, "only the good call was written");
    store.cleanup().await;
}

/// Bad input: a stored row that no longer decodes goes to the dead letters
/// with its reason, and the rest of its key flows.
pub async fn an_undecodable_row_is_set_aside_and_the_rest_flows<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    store
        .insert_raw(
            b"a",
            r#"{"key":"a","seq":"not a number"}"#,
            r#"{"text":"x"}"#,
        )
        .await;
    publish_keys(&store, 1, 3).await;
    let mut tx = store.begin().await;
    store
        .publish(&mut tx, vec![message("a", 0)])
        .await
        .expect("publish");
    store.commit(tx).await;

    let received = InMemory::default();
    let relay = relay_into(&store, &received).await;
    let got = received
        .wait_for(4, DELIVERY)
        .await
        .expect("the rest arrives");
    relay.stop().await;

    assert_eq!(got.len(), 4);
    let dead = store.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("invalid type"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].partition_key, b"a");
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// Shutdown: cancelling with slow sends in flight returns within the grace
/// (plus scheduling slack) and removes nothing unconfirmed.
pub async fn shutdown_returns_within_the_grace_and_keeps_unconfirmed_rows<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    publish_keys(&store, 4, 10).await;
    let slow_key = "key-1";

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let transport = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            if message.headers.key == slow_key {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            sink.oneshot(message).await
        }
    });
    let grace = Duration::from_millis(500);
    let poller = store
        .poller(PollerOptions::default())
        .await
        .expect("poller");
    let producer = Producer::new(poller, Transport::new(transport)).shutdown_grace(grace);
    let relay = Relay::start::<H, _>(producer);
    received
        .wait_for(30, DELIVERY)
        .await
        .expect("fast keys arrive");
    // Let the removal of the last confirmed messages run.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = tokio::time::Instant::now();
    relay.stop().await;
    let took = started.elapsed();
    assert!(
        took <= grace + Duration::from_secs(2),
        "shutdown took {took:?}"
    );
    assert_eq!(received.len(), 30);
    assert_eq!(store.pending().await, 10, "the slow key keeps its messages");
    store.cleanup().await;
}

/// A transport that refuses `key-0` seq 2 for good while `refuse` is set.
fn poison_transport(
    received: InMemory<Msg>,
    refuse: Arc<AtomicBool>,
) -> impl tower::Service<Msg, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |message: Msg| {
        let (sink, refuse) = (received.clone(), Arc::clone(&refuse));
        async move {
            let poison = message.headers.key == "key-0" && message.headers.seq == 2;
            if poison && refuse.load(Ordering::SeqCst) {
                return Err::<(), BoxError>(SendError::permanent("refused for good").into());
            }
            sink.oneshot(message).await.map_err(BoxError::from)
        }
    })
}

/// Dead letters with the block policy: the partition stops at the refused
/// message, a replay puts it back in its original place and the key goes on
/// in order.
pub async fn replay_puts_a_dead_letter_back_in_order<H: Harness>() {
    let options = StoreOptions {
        policy: DeadLetterPolicy::Block,
        ..StoreOptions::default()
    };
    let store = H::new(options).await;
    publish_keys(&store, 2, 5).await;
    let received: InMemory<Msg> = InMemory::default();
    let refuse = Arc::new(AtomicBool::new(true));
    let poller = store
        .poller(PollerOptions::default())
        .await
        .expect("poller");
    let transport = poison_transport(received.clone(), Arc::clone(&refuse));
    let relay = Relay::start::<H, _>(Producer::new(poller, Transport::new(transport)));

    received.wait_for(7, DELIVERY).await.expect("7 arrive");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received.len(), 7, "key-0 is held after the refused message");
    let dead = store.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("refused for good"),
        "{}",
        dead[0].reason
    );
    assert_eq!(store.pending().await, 2, "key-0 seq 3 and 4 wait");

    refuse.store(false, Ordering::SeqCst);
    assert_eq!(store.replay(&[dead[0].id]).await, 1);
    let got = received.wait_for(10, DELIVERY).await.expect("all arrive");
    relay.stop().await;

    assert_eq!(
        by_key(&got)["key-0"],
        [0, 1, 2, 3, 4],
        "the replayed message goes out in its original place"
    );
    let replayed = got
        .iter()
        .find(|m| m.headers.key == "key-0" && m.headers.seq == 2);
    assert_eq!(
        replayed.map(|m| m.id),
        Some(dead[0].id),
        "replay keeps the id"
    );
    assert!(store.dead_letters().await.is_empty());
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}

/// Purging dead letters drops them for good; unknown ids are ignored.
pub async fn purge_drops_dead_letters<H: Harness>() {
    let store = H::new(StoreOptions::default()).await;
    store
        .insert_raw(b"a", r#"{"key":"a"}"#, r#"{"text":"x"}"#)
        .await;
    let received = InMemory::default();
    let relay = relay_into(&store, &received).await;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let dead = loop {
        let dead = store.dead_letters().await;
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.stop().await;
    assert_eq!(dead.len(), 1, "the undecodable row is set aside");

    let unknown = postoffice_core::MessageId::new(dead[0].id.get() + 1000);
    assert_eq!(store.purge_dead(&[dead[0].id, unknown]).await, 1);
    assert!(store.dead_letters().await.is_empty());
    assert_eq!(
        store.replay(&[dead[0].id]).await,
        0,
        "nothing left to replay"
    );
    assert_eq!(store.pending().await, 0);
    store.cleanup().await;
}
