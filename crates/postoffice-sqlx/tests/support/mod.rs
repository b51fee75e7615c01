//! Shared helpers: a fresh schema per test, message types, a running relay.

#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;
use std::time::Duration;

use postoffice_core::transport::InMemory;
use postoffice_core::{CancellationToken, Message, PartitionKey, Producer, Transport};
use postoffice_sqlx::{PgSqlxOutbox, PgSqlxOutboxPoller, PgSqlxOutboxPollerBuilder};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub key: String,
    pub seq: u32,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.key.clone().into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub text: String,
}

pub fn message(key: &str, seq: u32) -> (Headers, Payload) {
    (
        Headers {
            key: key.to_owned(),
            seq,
        },
        Payload {
            text: format!("{key}-{seq}"),
        },
    )
}

pub type Msg = Message<Headers, Payload>;

/// A schema of its own for one test, dropped by [`TestDb::close`]; with
/// [`TestDb::with_database`], a database of its own too.
pub struct TestDb {
    pub pool: PgPool,
    pub schema: String,
    /// The test's own database, and a pool on the server's default one to
    /// drop it with.
    database: Option<(String, PgPool)>,
}

async fn connect(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect to Postgres (set DATABASE_URL)")
}

fn random_name() -> String {
    format!("po_{:016x}", rand::rng().random::<u64>())
}

impl TestDb {
    pub async fn new() -> Self {
        let options = PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
        Self::in_pool(connect(options).await, None).await
    }

    /// A fresh database, for tests that need no other session to hold back
    /// vacuum.
    pub async fn with_database() -> Self {
        let options = PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
        let admin = connect(options.clone()).await;
        let name = random_name();
        sqlx::raw_sql(AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let pool = connect(options.database(&name)).await;
        Self::in_pool(pool, Some((name, admin))).await
    }

    async fn in_pool(pool: PgPool, database: Option<(String, PgPool)>) -> Self {
        let schema = random_name();
        sqlx::raw_sql(AssertSqlSafe(format!("create schema {schema}")))
            .execute(&pool)
            .await
            .expect("create schema");
        Self {
            pool,
            schema,
            database,
        }
    }

    /// `schema.postoffice_outbox`.
    pub fn table(&self) -> String {
        format!("{}.postoffice_outbox", self.schema)
    }

    pub async fn outbox(&self) -> PgSqlxOutbox {
        PgSqlxOutbox::builder(self.pool.clone())
            .schema(&self.schema)
            .build()
            .await
            .expect("outbox")
    }

    pub fn poller(&self) -> PgSqlxOutboxPollerBuilder<Headers, Payload> {
        PgSqlxOutboxPoller::builder(self.pool.clone())
            .schema(&self.schema)
            .poll_interval(Duration::from_millis(200))
    }

    /// Runs a query returning one bigint, with `{t}` standing for the outbox
    /// table and `{d}` for the dead-letter table.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sql
            .replace("{t}", &self.table())
            .replace("{d}", &format!("{}_dead", self.table()));
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .expect("scalar query")
    }

    pub async fn execute(&self, sql: &str) {
        let sql = sql
            .replace("{t}", &self.table())
            .replace("{d}", &format!("{}_dead", self.table()));
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .expect("statement");
    }

    /// Rows still in the outbox table (pending or, in logical mode, delivered).
    pub async fn rows(&self) -> i64 {
        self.scalar("select count(*) from {t}").await
    }

    pub async fn close(self) {
        let drop = format!("drop schema if exists {} cascade", self.schema);
        let _ = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&self.pool).await;
        self.pool.close().await;
        if let Some((name, admin)) = self.database {
            let drop = format!("drop database if exists {name} with (force)");
            let _ = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&admin).await;
            admin.close().await;
        }
    }
}

/// A producer running on a poller, recording what it sends.
pub struct Relay {
    pub received: InMemory<Msg>,
    token: CancellationToken,
    handle: JoinHandle<Result<(), postoffice_core::ProducerError>>,
}

impl Relay {
    pub fn start(poller: PgSqlxOutboxPoller<Headers, Payload>) -> Self {
        let received = InMemory::default();
        let producer = Producer::new(poller, Transport::new(received.clone()));
        let token = CancellationToken::new();
        let handle = tokio::spawn(producer.run(token.clone()));
        Self {
            received,
            token,
            handle,
        }
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Msg> {
        self.received
            .wait_for(n, Duration::from_secs(30))
            .await
            .expect("messages delivered")
    }

    pub async fn stop(self) -> Vec<Msg> {
        self.token.cancel();
        self.handle.await.expect("relay task").expect("relay run");
        self.received.messages()
    }
}

/// Asserts that each key's messages arrived with strictly growing `seq`.
pub fn assert_per_key_order(messages: &[Msg]) {
    let mut last: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for message in messages {
        let seq = message.headers.seq;
        if let Some(previous) = last.insert(&message.headers.key, seq) {
            assert!(
                seq > previous,
                "key {} went from {previous} to {seq}",
                message.headers.key
            );
        }
    }
}
