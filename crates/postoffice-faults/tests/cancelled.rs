//! Scenario 5: `run` is cancelled while slow sends are in flight. It returns
//! within the shutdown grace, the rows of unconfirmed messages stay, and a new
//! producer delivers them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use postoffice_core::transport::InMemory;
use postoffice_core::{CancellationToken, Message, Producer, Transport};
use postoffice_faults::db::{self, Db};
use postoffice_faults::inject::Slow;
use postoffice_faults::{Arrival, Headers, Payload, check, init_tracing, messages, random_name};

const TOTAL: usize = 400;
const GRACE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_with_slow_sends_in_flight_keeps_unconfirmed_rows() {
    init_tracing();
    let db = Db::create().await.unwrap();
    let committed = db.publish(&messages(8, TOTAL, 0), 100).await.unwrap();
    let pool = db::pool(&random_name("po-relay"), 4).await.unwrap();

    // Each send takes 400 ms, four in flight per partition: a cancellation
    // always finds sends in flight, and they cannot all finish in the grace.
    let received: InMemory<Message<Headers, Payload>> = InMemory::default();
    let producer = Producer::new(
        db.poller(pool.clone()).build().await.unwrap(),
        Transport::new(Slow::new(received.clone(), Duration::from_millis(400))),
    )
    .batch_size(50)
    .in_flight_per_partition(4)
    .shutdown_grace(GRACE);
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    received
        .wait_for(40, Duration::from_secs(30))
        .await
        .unwrap();

    let cancelled = Instant::now();
    token.cancel();
    relay.await.unwrap().unwrap();
    let took = cancelled.elapsed();
    let first: Vec<Arrival> = received.messages().iter().map(Arrival::from).collect();

    // Every message the transport did not confirm still has its row.
    let pending: HashSet<(String, u32)> = db.pending().await.unwrap().into_iter().collect();
    let confirmed: HashSet<(String, u32)> = first.iter().map(|a| (a.key.clone(), a.seq)).collect();
    let unconfirmed_without_row = messages(8, TOTAL, 0)
        .into_iter()
        .map(|(_, p)| (p.key, p.seq))
        .filter(|m| !confirmed.contains(m) && !pending.contains(m))
        .count();

    // A new producer delivers the rest.
    let rest: InMemory<Message<Headers, Payload>> = InMemory::default();
    let producer = Producer::new(
        db.poller(pool).build().await.unwrap(),
        Transport::new(rest.clone()),
    );
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.rows().await.unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    relay.await.unwrap().unwrap();

    let mut arrivals = first.clone();
    arrivals.extend(rest.messages().iter().map(Arrival::from));
    let report = check("cancelled", &committed, &arrivals);
    println!(
        "{report} (run returned {took:?} after cancel with grace {GRACE:?}; {} confirmed before, \
         {} rows kept)",
        first.len(),
        pending.len()
    );
    assert!(
        took <= GRACE + Duration::from_secs(1),
        "run returned {took:?} after cancel, grace {GRACE:?}"
    );
    assert!(first.len() < TOTAL, "sends were in flight at cancel");
    assert_eq!(
        unconfirmed_without_row, 0,
        "no unconfirmed message lost its row"
    );
    assert!(report.is_clean(), "{report}");
    db.close().await;
}
