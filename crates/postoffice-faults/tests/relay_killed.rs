//! Scenario 1: the relay process is killed with SIGKILL mid-batch, then
//! started again. Postgres outbox → relay binary → RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use postoffice_faults::amqp::Sink;
use postoffice_faults::db::Db;
use postoffice_faults::process::Guard;
use postoffice_faults::{check, init_tracing, messages};

const TOTAL: usize = 10_000;
const KILL_AT: usize = 3_000;

fn relay(db: &Db, sink: &Sink) -> Guard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command
        .args(["--schema", &db.schema, "--exchange", &sink.exchange])
        .stdout(Stdio::null());
    Guard::spawn(command).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_and_restarted_loses_nothing() {
    init_tracing();
    let db = Db::create().await.unwrap();
    let sink = Sink::declare("killed").await.unwrap();
    let reader = sink.reader().await.unwrap();
    let committed = db.publish(&messages(20, TOTAL, 0), 500).await.unwrap();

    let mut first = relay(&db, &sink);
    assert!(
        reader.wait_for(KILL_AT, Duration::from_secs(60)).await,
        "the relay delivered {} messages in 60 s",
        reader.len()
    );
    first.stop("-KILL", Duration::from_secs(5)).await.unwrap();
    let at_kill = reader.len();
    let pending_at_kill = db.rows().await.unwrap();
    assert!(
        pending_at_kill > 0,
        "the relay was killed mid-stream ({at_kill} arrived, no row left)"
    );

    let mut second = relay(&db, &sink);
    let arrivals = reader
        .settle(TOTAL, Duration::from_secs(2), Duration::from_secs(120))
        .await;
    second.stop("-TERM", Duration::from_secs(15)).await.unwrap();
    let left = db.rows().await.unwrap();

    let report = check("relay_killed", &committed, &arrivals);
    println!("{report} (killed after {at_kill} arrivals, {pending_at_kill} rows pending)");
    assert!(report.is_clean(), "{report}");
    assert_eq!(left, 0, "every delivered row was removed");

    reader.stop();
    sink.delete().await;
    db.close().await;
}
