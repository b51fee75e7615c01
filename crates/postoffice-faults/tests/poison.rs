//! Acceptance: a poison message on key A (a permanent send error) does not
//! delay key B by more than one poll interval, and key A's later messages go
//! on (`MoveOn`) or wait for the replay (`Block`). Postgres outbox →
//! in-process relay → a transport that refuses A's poison message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postoffice_core::dead_letter::DeadLetterPolicy;
use postoffice_core::{
    BoxError, CancellationToken, Message, Producer, SendError, Transport, partition_for,
};
use postoffice_faults::db::{self, Db};
use postoffice_faults::{
    Arrival, Committed, Headers, Payload, check, init_tracing, key_name, random_name,
};
use postoffice_sqlx::PgSqlxOutboxPoller;

const POLL_INTERVAL: Duration = Duration::from_millis(500);
const ROUNDS: u32 = 20;
const POISON_SEQ: u32 = 1;

type Arrivals = Arc<Mutex<Vec<(Arrival, Instant)>>>;

/// Two keys in different partitions.
fn keys() -> (String, String) {
    let a = key_name(0);
    let partition_a = partition_for(a.as_bytes(), postoffice_core::DEFAULT_PARTITIONS);
    let b = (1..)
        .map(key_name)
        .find(|b| partition_for(b.as_bytes(), postoffice_core::DEFAULT_PARTITIONS) != partition_a)
        .unwrap();
    (a, b)
}

struct Run {
    db: Db,
    poller: PgSqlxOutboxPoller<Headers, Payload>,
    arrivals: Arrivals,
    refuse: Arc<AtomicBool>,
    token: CancellationToken,
    relay: tokio::task::JoinHandle<Result<(), postoffice_core::ProducerError>>,
    committed: Committed,
    /// Commit time of each of B's messages.
    b_commits: HashMap<u32, Instant>,
    a: String,
    b: String,
}

/// Starts the relay, then commits A0, the poison A1, and `ROUNDS` rounds of
/// one B and one more A message, each in its own transaction.
async fn start(policy: DeadLetterPolicy) -> Run {
    init_tracing();
    let (a, b) = keys();
    let db = Db::create().await.unwrap();
    let pool = db::pool(&random_name("po-relay"), 4).await.unwrap();
    let poller = db
        .poller(pool)
        .poll_interval(POLL_INTERVAL)
        .dead_letter_policy(policy)
        .build()
        .await
        .unwrap();

    let arrivals: Arrivals = Arc::default();
    let refuse = Arc::new(AtomicBool::new(true));
    let transport = {
        let (arrivals, refuse, a) = (Arc::clone(&arrivals), Arc::clone(&refuse), a.clone());
        tower::service_fn(move |message: Message<Headers, Payload>| {
            let (arrivals, refuse) = (Arc::clone(&arrivals), Arc::clone(&refuse));
            let poison = message.payload.key == a && message.payload.seq == POISON_SEQ;
            async move {
                if poison && refuse.load(Ordering::SeqCst) {
                    // A broker round trip before the refusal.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Err::<(), BoxError>(SendError::permanent("refused: poison").into());
                }
                let arrival = Arrival::from(&message);
                arrivals.lock().unwrap().push((arrival, Instant::now()));
                Ok(())
            }
        })
    };
    let token = CancellationToken::new();
    let producer = Producer::new(poller.clone(), Transport::new(transport));
    let relay = tokio::spawn(producer.run(token.clone()));

    let message = |key: &str, seq: u32| {
        let headers = Headers {
            key: key.to_owned(),
        };
        let payload = Payload {
            key: key.to_owned(),
            seq,
        };
        (headers, payload)
    };
    let mut committed = db
        .publish(&[message(&a, 0), message(&a, POISON_SEQ)], 2)
        .await
        .unwrap();
    let mut b_commits = HashMap::new();
    for round in 0..ROUNDS {
        committed.extend(db.publish(&[message(&b, round)], 1).await.unwrap());
        b_commits.insert(round, Instant::now());
        committed.extend(db.publish(&[message(&a, round + 2)], 1).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Run {
        db,
        poller,
        arrivals,
        refuse,
        token,
        relay,
        committed,
        b_commits,
        a,
        b,
    }
}

impl Run {
    fn arrivals(&self) -> Vec<Arrival> {
        let list = self.arrivals.lock().unwrap();
        list.iter().map(|(arrival, _)| arrival.clone()).collect()
    }

    fn delivered(&self, key: &str) -> usize {
        let arrivals = self.arrivals();
        arrivals.iter().filter(|a| a.key == key).count()
    }

    /// The longest wait of a B message from its commit to its arrival.
    fn worst_b_latency(&self) -> Duration {
        let list = self.arrivals.lock().unwrap();
        list.iter()
            .filter(|(arrival, _)| arrival.key == self.b)
            .map(|(arrival, at)| at.duration_since(self.b_commits[&arrival.seq]))
            .max()
            .unwrap_or_default()
    }

    async fn wait(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 30 s for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.relay.await.unwrap().unwrap();
        self.db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_on_a_poison_message_holds_back_neither_key() {
    let mut run = start(DeadLetterPolicy::MoveOn).await;
    let rounds = ROUNDS as usize;
    run.wait("B's and A's later messages", |r| {
        r.delivered(&r.b) == rounds && r.delivered(&r.a) == rounds + 1
    })
    .await;

    let dead = run.poller.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "the poison message was set aside: {dead:?}");
    assert!(dead[0].reason.contains("poison"), "{}", dead[0].reason);
    assert_eq!(dead[0].attempts, 0, "a permanent error is not retried");
    let worst = run.worst_b_latency();

    // Everything but the set-aside message arrived, in order.
    let a = run.a.clone();
    run.committed.remove(&a, POISON_SEQ);
    let report = check("poison_move_on", &run.committed, &run.arrivals());
    println!(
        "{report} (worst commit-to-send of key B: {worst:?}, poll interval {POLL_INTERVAL:?})"
    );
    assert!(report.is_clean(), "{report}");
    assert!(
        worst <= POLL_INTERVAL + Duration::from_secs(1),
        "key B waited {worst:?}"
    );

    assert_eq!(run.poller.purge(&[dead[0].id]).await.unwrap(), 1);
    assert!(run.poller.dead_letters(10).await.unwrap().is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_a_poison_message_holds_back_its_key_until_replayed() {
    let run = start(DeadLetterPolicy::Block).await;
    let rounds = ROUNDS as usize;
    run.wait("B's messages", |r| r.delivered(&r.b) == rounds)
        .await;
    let worst = run.worst_b_latency();

    // A stops at the poison message; its later messages wait.
    tokio::time::sleep(POLL_INTERVAL * 2).await;
    assert_eq!(run.delivered(&run.a), 1, "only A0 went before the poison");
    assert_eq!(
        run.db.rows().await.unwrap(),
        i64::from(ROUNDS),
        "A's later rows wait"
    );
    let dead = run.poller.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");

    // Replayed (and no longer refused), it goes first, then the rest of A.
    run.refuse.store(false, Ordering::SeqCst);
    assert_eq!(run.poller.replay(&[dead[0].id]).await.unwrap(), 1);
    run.wait("A's messages after the replay", |r| {
        r.delivered(&r.a) == rounds + 2
    })
    .await;

    let report = check("poison_block", &run.committed, &run.arrivals());
    println!(
        "{report} (worst commit-to-send of key B: {worst:?}, poll interval {POLL_INTERVAL:?})"
    );
    assert!(report.is_clean(), "{report}");
    assert!(
        worst <= POLL_INTERVAL + Duration::from_secs(1),
        "key B waited {worst:?}"
    );
    run.stop().await;
}
