//! Scenario 2: Postgres terminates every session of the relay's pool, several
//! times, while the relay drains 10,000 messages into an in-memory transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use postoffice_core::retry::Backoff;
use postoffice_core::transport::InMemory;
use postoffice_core::{CancellationToken, Message, Producer, Transport};
use postoffice_faults::db::{self, Db};
use postoffice_faults::inject::Slow;
use postoffice_faults::{Arrival, Headers, Payload, check, init_tracing, messages, random_name};

const TOTAL: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_mid_batch_lose_nothing() {
    init_tracing();
    let db = Db::create().await.unwrap();
    let committed = db.publish(&messages(20, TOTAL, 0), 500).await.unwrap();

    // The relay's pool has a name of its own, so only its sessions are ended.
    let app = random_name("po-relay");
    let relay_pool = db::pool(&app, 4).await.unwrap();
    let poller = db.poller(relay_pool).build().await.unwrap();
    let received: InMemory<Message<Headers, Payload>> = InMemory::default();
    let transport = Transport::new(Slow::new(received.clone(), Duration::from_millis(2)));
    let producer = Producer::new(poller, transport)
        .batch_size(100)
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(200),
        ));
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    let mut terminations = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while db.rows().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows still pending after 120 s",
            db.rows().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let ended = db.terminate(&app).await.unwrap();
        if ended > 0 && received.len() < TOTAL {
            terminations.push((ended, received.len()));
        }
    }
    token.cancel();
    relay.await.unwrap().unwrap();

    let arrivals: Vec<Arrival> = received.messages().iter().map(Arrival::from).collect();
    let report = check("postgres_terminated", &committed, &arrivals);
    println!(
        "{report} ({} terminations mid-drain: {terminations:?} as (sessions, arrivals))",
        terminations.len()
    );
    assert!(
        terminations.len() >= 3,
        "the relay's sessions were ended at least three times mid-drain: {terminations:?}"
    );
    assert!(report.is_clean(), "{report}");
    db.close().await;
}
