//! The Postgres store against a real server: atomicity, one-statement publish,
//! late commits, partitioned pollers, deletion modes, dead letters, NUL input,
//! wake-up and listener reconnection, and the migration files.
//!
//! Each test works in a schema of its own (`po_<random>`), dropped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use postoffice_core::poller::{DeadLetter, Fail, Fetch};
use postoffice_core::transport::InMemory;
use postoffice_core::{
    CancellationToken, Outbox, Producer, PublishError, Transport, partition_for,
};
use postoffice_sqlx::{DeletionMode, Error, PgSqlxOutbox, PgSqlxOutboxPoller};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use support::{Headers, Msg, Payload, Relay, TestDb, assert_per_key_order, database_url, message};
use tower::ServiceExt;

#[tokio::test]
async fn commit_publishes_and_rollback_leaves_nothing() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);

    let mut tx = db.pool.begin().await.unwrap();
    let batch = (0..3).map(|seq| message("a", seq));
    outbox.publish_messages(batch, &mut tx).await.unwrap();
    assert_eq!(db.rows().await, 0, "invisible before commit");
    tx.commit().await.unwrap();
    assert_eq!(db.rows().await, 3);

    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("a", 10), message("b", 11)], &mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.rows().await, 3, "a rollback leaves no row");

    let relay = Relay::start(db.poller().build().await.unwrap());
    relay.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = relay.stop().await;
    let seqs: Vec<u32> = got.iter().map(|m| m.headers.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(db.rows().await, 0, "physical mode deletes delivered rows");
    db.close().await;
}

#[tokio::test]
async fn publish_through_a_connection() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut conn = db.pool.acquire().await.unwrap();
    outbox
        .publish(
            Headers {
                key: "c".into(),
                seq: 1,
            },
            "text",
            &mut *conn,
        )
        .await
        .unwrap();
    drop(conn);
    assert_eq!(db.rows().await, 1);
    db.close().await;
}

#[tokio::test]
async fn ten_thousand_messages_are_written_by_one_statement() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    // A statement-level trigger counts the INSERT statements the server runs
    // on the outbox table: N row-by-row inserts would count N.
    let schema = &db.schema;
    db.execute(&format!(
        "create table {schema}.statements (n int not null);
         insert into {schema}.statements values (0);
         create function {schema}.count_statement() returns trigger language plpgsql as
           $$ begin update {schema}.statements set n = n + 1; return null; end $$;
         create trigger count_statement after insert on {{t}}
           for each statement execute function {schema}.count_statement();"
    ))
    .await;

    let mut tx = db.pool.begin().await.unwrap();
    let batch: Vec<_> = (0..10_000)
        .map(|seq| message(&format!("key-{}", seq % 37), seq))
        .collect();
    let started = std::time::Instant::now();
    outbox.publish_messages(batch, &mut tx).await.unwrap();
    println!("publishing 10,000 messages took {:?}", started.elapsed());
    tx.commit().await.unwrap();

    let statements = db
        .scalar(&format!("select n::int8 from {schema}.statements"))
        .await;
    assert_eq!(statements, 1, "one insert statement for the whole call");
    assert_eq!(db.rows().await, 10_000);
    let sql = format!(
        "select (headers->>'seq')::int4 from {} order by id",
        db.table()
    );
    let seqs: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seqs,
        (0..10_000).collect::<Vec<i32>>(),
        "ids follow publish order"
    );
    db.close().await;
}

#[tokio::test]
async fn a_late_commit_is_still_delivered() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);

    // A takes the lower id but commits last.
    let mut a = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("k", 1)], &mut a)
        .await
        .unwrap();
    let mut b = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("k", 2)], &mut b)
        .await
        .unwrap();
    b.commit().await.unwrap();

    let relay = Relay::start(db.poller().build().await.unwrap());
    let got = relay.wait_for(1).await;
    assert_eq!(got[0].headers.seq, 2);

    a.commit().await.unwrap();
    let got = relay.wait_for(2).await;
    assert_eq!(
        got[1].headers.seq, 1,
        "the late commit is delivered after all"
    );
    assert!(got[1].id < got[0].id);
    relay.stop().await;
    assert_eq!(db.rows().await, 0);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_below_the_read_ahead_cursor_is_still_delivered() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);

    // The late message (seq 0) takes the lowest id of its key's partition
    // and commits while the relay reads ahead above it.
    let mut slow = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("k", 0)], &mut slow)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((1..=200).map(|seq| message("k", seq)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let received: InMemory<Msg> = InMemory::default();
    let sink = received.clone();
    let slow_sends = tower::service_fn(move |message: Msg| {
        let sink = sink.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            sink.oneshot(message).await
        }
    });
    let poller = db.poller().build().await.unwrap();
    let producer = Producer::new(poller, Transport::new(slow_sends))
        .batch_size(4)
        .read_ahead(Some(Duration::from_millis(100)));
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    received
        .wait_for(20, Duration::from_secs(30))
        .await
        .unwrap();
    slow.commit().await.unwrap();
    let got = received
        .wait_for(201, Duration::from_secs(30))
        .await
        .expect("the late message is delivered too");
    token.cancel();
    relay.await.unwrap().unwrap();

    let late = got.iter().position(|m| m.headers.seq == 0).unwrap();
    assert!(late >= 20, "read after it committed");
    let seqs: Vec<u32> = got
        .iter()
        .filter(|m| m.headers.seq != 0)
        .map(|m| m.headers.seq)
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(db.rows().await, 0);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pollers_on_disjoint_partitions_keep_per_key_order() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut relays = Vec::new();
    for i in 0..4_u32 {
        let owned: Vec<u32> = (i * 4..i * 4 + 4).collect();
        let poller = db
            .poller()
            .partitions(16)
            .owned_partitions(owned.clone())
            .build()
            .await;
        relays.push((owned, Relay::start(poller.unwrap())));
    }

    // 10 keys x 200 messages, published while the relays run, in
    // transactions of 10 messages each.
    for seq in 0..200 {
        let mut tx = db.pool.begin().await.unwrap();
        let batch = (0..10).map(|k| message(&format!("key-{k}"), seq));
        outbox.publish_messages(batch, &mut tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while relays.iter().map(|(_, r)| r.received.len()).sum::<usize>() < 2000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all messages delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut all = HashSet::new();
    let mut serving = 0;
    for (owned, relay) in relays {
        let got = relay.stop().await;
        serving += usize::from(!got.is_empty());
        for message in &got {
            assert!(
                owned.contains(&message.partition),
                "poller served a foreign partition"
            );
            assert_eq!(
                message.partition,
                partition_for(message.headers.key.as_bytes(), 16)
            );
            all.insert((message.headers.key.clone(), message.headers.seq));
        }
        assert_per_key_order(&got);
    }
    assert_eq!(all.len(), 2000, "every message delivered");
    assert!(serving >= 2, "the keys spread over more than one poller");
    assert_eq!(db.rows().await, 0);
    db.close().await;
}

#[tokio::test]
async fn logical_mode_marks_rows_and_the_purge_removes_old_ones() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((0..20).map(|seq| message("l", seq)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let poller = db
        .poller()
        .deletion(DeletionMode::Logical)
        .build()
        .await
        .unwrap();
    let relay = Relay::start(poller.clone());
    relay.wait_for(20).await;
    relay.stop().await;

    assert_eq!(db.rows().await, 20, "rows are kept");
    assert_eq!(
        db.scalar("select count(*) from {t} where delivered_at is null")
            .await,
        0
    );
    let again = ServiceExt::<Fetch>::oneshot(poller.clone(), Fetch::new(vec![], 100))
        .await
        .unwrap();
    assert!(again.is_empty(), "delivered rows are not fetched again");

    db.execute(
        "update {t} set delivered_at = now() - interval '2 hours'
         where id in (select id from {t} order by id limit 15)",
    )
    .await;
    let purged = poller
        .purge_delivered(Duration::from_secs(3600), 4)
        .await
        .unwrap();
    assert_eq!(purged, 15);
    assert_eq!(db.rows().await, 5);
    assert_eq!(
        poller
            .purge_delivered(Duration::from_secs(3600), 4)
            .await
            .unwrap(),
        0
    );
    db.close().await;
}

/// The poller's fetch statement, as `Queries::new` builds it, for EXPLAIN.
fn fetch_sql(table: &str) -> String {
    format!(
        "select m.id, m.partition, m.partition_key, m.headers::text, m.payload::text, \
         m.attempts, m.created_at, m.next_attempt_at \
         from unnest($1::int4[], $3::int8[]) as p(partition, after) cross join lateral ( \
         select o.id, o.partition, o.partition_key, o.headers, o.payload, o.attempts, \
         o.created_at, o.next_attempt_at from {table} as o \
         where (o.partition, o.id) > (p.partition, p.after) \
         and o.partition <= p.partition and o.delivered_at is null \
         order by o.partition, o.id limit $2) as m"
    )
}

/// Runs EXPLAIN ANALYZE on a fetch of all 16 partitions and returns the plan
/// and the number of shared buffers it touched.
async fn explain_fetch(db: &TestDb) -> (serde_json::Value, i64) {
    let sql = format!(
        "explain (analyze, buffers, format json) {}",
        fetch_sql(&db.table())
    );
    let plan: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind((0..16).collect::<Vec<i32>>())
        .bind(100_i64)
        .bind(vec![i64::MIN; 16])
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let top = &plan[0]["Plan"];
    let blocks =
        top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    (plan, blocks)
}

#[tokio::test]
async fn logical_mode_poll_cost_does_not_grow_with_history() {
    // A database of its own: an open transaction of another test would keep
    // vacuum from removing the delivered rows' index entries.
    let db = TestDb::with_database().await;
    db.outbox().await;
    db.execute(
        "insert into {t} (partition, partition_key, headers, payload)
         select g % 16, int4send(g), '{\"key\":\"p\",\"seq\":0}', '{\"text\":\"p\"}'
         from generate_series(1, 10) g;
         analyze {t};",
    )
    .await;
    let (_, empty_blocks) = explain_fetch(&db).await;

    // One million rows published, then delivered the way the poller marks
    // them, then vacuumed as autovacuum would.
    db.execute(
        "insert into {t} (partition, partition_key, headers, payload)
         select g % 16, int4send(g), '{\"key\":\"d\",\"seq\":0}', '{\"text\":\"d\"}'
         from generate_series(1, 1000000) g",
    )
    .await;
    db.execute("update {t} set delivered_at = now() where payload->>'text' = 'd'")
        .await;
    db.execute("vacuum analyze {t}").await;
    let (plan, history_blocks) = explain_fetch(&db).await;
    let text = plan.to_string();
    let table_blocks = db.scalar("select pg_relation_size('{t}') / 8192").await;

    println!("poll of 16 partitions, 10 pending rows, no history: {empty_blocks} buffers");
    println!("same after 1,000,000 delivered rows: {history_blocks} buffers");
    println!("the table has {table_blocks} blocks; plan: {text}");
    assert!(
        text.contains("postoffice_outbox_pending"),
        "the partial index serves the poll"
    );
    assert!(!text.contains("Seq Scan"), "no scan over the table");
    // The history may add index levels (a few pages per partition), nothing
    // that grows with the number of rows.
    assert!(
        history_blocks <= empty_blocks + 16 * 8,
        "poll touched {history_blocks} buffers with history, {empty_blocks} without"
    );
    db.close().await;
}

#[tokio::test]
async fn an_undecodable_row_is_set_aside_and_the_rest_delivered() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let partition = partition_for(b"k", 16);
    db.execute(&format!(
        "insert into {{t}} (partition, partition_key, headers, payload) values
         ({partition}, 'k'::bytea, '{{\"key\":\"k\",\"seq\":0}}', '{{\"wrong\":1}}')"
    ))
    .await;
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((1..=100).map(|seq| message("k", seq)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::start(db.poller().build().await.unwrap());
    relay.wait_for(100).await;
    let got = relay.stop().await;
    let seqs: Vec<u32> = got.iter().map(|m| m.headers.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<u32>>());

    let row = sqlx::query(AssertSqlSafe(format!(
        "select reason, payload::text from {}_dead",
        db.table()
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let reason: String = row.get(0);
    let payload: String = row.get(1);
    assert!(reason.contains("missing field `text`"), "reason: {reason}");
    assert_eq!(payload, r#"{"wrong": 1}"#, "the original payload is kept");
    assert_eq!(db.rows().await, 0);
    db.close().await;
}

#[tokio::test]
async fn a_nul_character_is_a_typed_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("n", 1)], &mut tx)
        .await
        .unwrap();

    let bad_payload = (
        Headers {
            key: "n".into(),
            seq: 3,
        },
        Payload {
            text: "a\0b".into(),
        },
    );
    let error = outbox
        .publish_messages([message("n", 2), bad_payload], &mut tx)
        .await
        .unwrap_err();
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
    let bad_headers = (
        Headers {
            key: "n\0".into(),
            seq: 4,
        },
        Payload { text: "x".into() },
    );
    let error = outbox
        .publish_messages([bad_headers], &mut tx)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        PublishError::NulCharacter {
            index: 0,
            field: "headers"
        }
    ));

    // The transaction is still usable and only the good call is in it.
    sqlx::query("select 1").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.rows().await, 1);
    db.close().await;
}

/// Listener backends of this test's outbox.
async fn listeners(db: &TestDb) -> i64 {
    db.scalar(&format!(
        "select count(*) from pg_stat_activity where application_name = 'postoffice-listener' \
         and query like 'LISTEN%{}%'",
        db.schema
    ))
    .await
}

#[tokio::test]
async fn delivery_survives_a_terminated_listener_connection() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    // Polling alone would take an hour: only wake-ups deliver in time.
    let poller = db
        .poller()
        .poll_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let relay = Relay::start(poller);
    let publish = |seq| {
        let (pool, outbox) = (db.pool.clone(), outbox.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            outbox
                .publish_messages([message("w", seq)], &mut tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };

    publish(1).await;
    relay.wait_for(1).await;

    let terminated = db
        .scalar(&format!(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity \
             where application_name = 'postoffice-listener' and query like 'LISTEN%{}%'",
            db.schema
        ))
        .await;
    assert_eq!(terminated, 1, "found the listener's connection");

    // Published while the listener may still be down: the wake-up after its
    // reconnection finds it.
    publish(2).await;
    relay.wait_for(2).await;

    // Once it listens again, notifications wake the relay as before.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while listeners(&db).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(3).await;
    let got = relay.wait_for(3).await;
    assert_eq!(
        got.iter().map(|m| m.headers.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    relay.stop().await;
    db.close().await;
}

#[tokio::test]
async fn without_notify_polling_delivers() {
    let db = TestDb::new().await;
    let store = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .notify(false);
    let outbox = Outbox::new(store.build().await.unwrap());
    let poller = db
        .poller()
        .notify(false)
        .poll_interval(Duration::from_millis(100));
    let relay = Relay::start(poller.build().await.unwrap());
    assert_eq!(listeners(&db).await, 0, "no listener without notify");

    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages((0..5).map(|seq| message("q", seq)), &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    relay.wait_for(5).await;
    relay.stop().await;
    assert_eq!(db.rows().await, 0);
    db.close().await;
}

#[tokio::test]
async fn dropping_the_poller_stops_its_listener() {
    let db = TestDb::new().await;
    let poller = db.poller().build().await.unwrap();
    let clone = poller.clone();
    assert_eq!(listeners(&db).await, 1);
    drop(poller);
    assert_eq!(listeners(&db).await, 1, "a clone keeps it");
    drop(clone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while listeners(&db).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener outlived the poller"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

#[tokio::test]
async fn the_migration_files_work_with_sqlx_migrate() {
    let db = TestDb::new().await;
    let unmigrated = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .migrate(false);
    let error = unmigrated.build().await.unwrap_err();
    assert!(matches!(error, Error::Schema { .. }), "{error:?}");

    // Run the files as they are, in this test's schema.
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .options([("search_path", db.schema.as_str())]);
    let migrated = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    MIGRATOR.run(&migrated).await.unwrap();
    assert_eq!(
        db.scalar(&format!(
            "select count(*) from {}._sqlx_migrations",
            db.schema
        ))
        .await,
        1
    );

    let store = PgSqlxOutbox::builder(migrated.clone())
        .schema(&db.schema)
        .migrate(false);
    let outbox = Outbox::new(store.build().await.unwrap());
    let poller = PgSqlxOutboxPoller::<Headers, Payload>::builder(migrated.clone())
        .schema(&db.schema)
        .migrate(false)
        .poll_interval(Duration::from_millis(200));
    let relay = Relay::start(poller.build().await.unwrap());
    let mut tx = migrated.begin().await.unwrap();
    outbox
        .publish_messages([message("m", 1)], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let got: Vec<Msg> = relay.wait_for(1).await;
    assert_eq!(got[0].payload.text, "m-1");
    relay.stop().await;
    migrated.close().await;
    db.close().await;
}

#[tokio::test]
async fn custom_names_and_bad_options() {
    let db = TestDb::new().await;
    let store = PgSqlxOutbox::builder(db.pool.clone())
        .schema(&db.schema)
        .table("events");
    let outbox = Outbox::new(store.build().await.unwrap());
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("e", 1)], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let sql = format!("select count(*) from {}.events", db.schema);
    assert_eq!(db.scalar(&sql).await, 1);
    let poller = PgSqlxOutboxPoller::<Headers, Payload>::builder(db.pool.clone())
        .schema(&db.schema)
        .table("events")
        .poll_interval(Duration::from_millis(200));
    let relay = Relay::start(poller.build().await.unwrap());
    relay.wait_for(1).await;
    relay.stop().await;

    let bad = PgSqlxOutbox::builder(db.pool.clone())
        .table("Events; drop table x")
        .build()
        .await;
    assert!(matches!(bad, Err(Error::InvalidName { kind: "table", .. })));
    let bad = PgSqlxOutboxPoller::<Headers, Payload>::builder(db.pool.clone())
        .schema(&db.schema)
        .partitions(8)
        .owned_partitions([1, 8])
        .build()
        .await;
    assert!(matches!(
        bad,
        Err(Error::PartitionOutOfRange {
            partition: 8,
            partitions: 8
        })
    ));
    db.close().await;
}

#[tokio::test]
async fn failures_are_counted_and_dead_letters_keep_their_reason() {
    let db = TestDb::new().await;
    let outbox = Outbox::new(db.outbox().await);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_messages([message("f", 1), message("f", 2)], &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let poller = db.poller().build().await.unwrap();
    let fetch = |poller| ServiceExt::<Fetch>::oneshot(poller, Fetch::new(vec![], 10));

    let first = fetch(poller.clone()).await.unwrap();
    assert_eq!(first.len(), 2);
    let next_try = chrono::Utc::now() + chrono::Duration::seconds(30);
    let fail = Fail::new(first[0].id, "broker away".into(), next_try);
    ServiceExt::<Fail>::oneshot(poller.clone(), fail)
        .await
        .unwrap();
    let again = fetch(poller.clone()).await.unwrap();
    assert_eq!(
        again[0].id, first[0].id,
        "a failed message stays at the head"
    );
    assert_eq!(again[0].attempts, 1);
    let kept = again[0].next_attempt_at.unwrap();
    assert!(
        (kept - next_try).num_milliseconds().abs() < 1,
        "next try kept: {kept}"
    );
    let error = db
        .scalar("select count(*) from {t} where last_error = 'broker away'")
        .await;
    assert_eq!(error, 1);

    let dead = DeadLetter::new(first[0].id, "refused for good".into());
    ServiceExt::<DeadLetter>::oneshot(poller.clone(), dead)
        .await
        .unwrap();
    let rest = fetch(poller.clone()).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.headers.seq).collect::<Vec<_>>(), [2]);
    let reason =
        db.scalar("select count(*) from {d} where reason = 'refused for good' and attempts = 1");
    assert_eq!(reason.await, 1);
    db.close().await;
}
