//! RabbitMQ side of the scenarios: an exchange and queue per test, a
//! background reader, and closing chosen connections from the broker side.
//! The reader uses `amqprs`, a different client library than the
//! transport's lapin.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amqprs::channel::{
    BasicConsumeArguments, Channel, ExchangeDeclareArguments, ExchangeDeleteArguments,
    QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{FieldName, FieldTable, FieldValue};
use anyhow::{Context as _, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Arrival, random_name};

/// The routing key every scenario publishes with.
pub const ROUTING_KEY: &str = "events";

/// `AMQP_URL`, or the local test broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Splits `amqp://user:password@host:port/vhost` for amqprs, which takes the
/// vhost decoded.
fn arguments(url: &str) -> anyhow::Result<OpenConnectionArguments> {
    let Some(rest) = url.strip_prefix("amqp://") else {
        bail!("AMQP_URL must start with amqp://, got {url}");
    };
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, address) = authority
        .rsplit_once('@')
        .unwrap_or(("guest:guest", authority));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host, port) = address.split_once(':').unwrap_or((address, "5672"));
    let vhost = match vhost {
        "" => "/".to_owned(),
        other => other.replace("%2f", "/").replace("%2F", "/"),
    };
    let port = port.parse().context("AMQP_URL port")?;
    let mut args = OpenConnectionArguments::new(host, port, user, password);
    args.virtual_host(&vhost)
        .connection_name(&random_name("postoffice-faults-reader"));
    Ok(args)
}

/// A direct exchange and a queue bound to it with [`ROUTING_KEY`], named for
/// one test, and the connection that declared them.
pub struct Sink {
    /// The exchange to publish to.
    pub exchange: String,
    /// The queue the exchange routes to.
    pub queue: String,
    connection: Connection,
    channel: Channel,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Declares the exchange and queue. The queue expires ten minutes after
    /// its last use, in case a test stops before [`Sink::delete`].
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses a declaration.
    pub async fn declare(name: &str) -> anyhow::Result<Self> {
        let connection = Connection::open(&arguments(&amqp_url())?)
            .await
            .context("connect to RabbitMQ (set AMQP_URL)")?;
        let channel = connection.open_channel(None).await?;
        let exchange = random_name(&format!("postoffice-faults-{name}-x"));
        let queue = random_name(&format!("postoffice-faults-{name}-q"));
        let declare = ExchangeDeclareArguments::new(&exchange, "direct")
            .auto_delete(true)
            .finish();
        channel.exchange_declare(declare).await?;
        let mut table = FieldTable::new();
        let expires = FieldName::try_from("x-expires").map_err(anyhow::Error::msg)?;
        table.insert(expires, FieldValue::I(600_000));
        let declare = QueueDeclareArguments::new(&queue).arguments(table).finish();
        channel.queue_declare(declare).await?;
        channel
            .queue_bind(QueueBindArguments::new(&queue, &exchange, ROUTING_KEY))
            .await?;
        Ok(Self {
            exchange,
            queue,
            connection,
            channel,
        })
    }

    /// Starts reading the queue in the background.
    ///
    /// # Errors
    ///
    /// When the consumer cannot be started.
    pub async fn reader(&self) -> anyhow::Result<Reader> {
        let channel = self.connection.open_channel(None).await?;
        let args = BasicConsumeArguments::new(&self.queue, &random_name("consumer"))
            .auto_ack(true)
            .finish();
        let (_tag, mut deliveries) = channel.basic_consume_rx(args).await?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (count, _) = watch::channel(0_usize);
        let count = Arc::new(count);
        let task = {
            let arrivals = Arc::clone(&arrivals);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                // Keep the channel open while reading.
                let _channel = channel;
                while let Some(message) = deliveries.recv().await {
                    let id = message
                        .basic_properties
                        .as_ref()
                        .and_then(|p| p.message_id())
                        .and_then(|id| id.parse().ok());
                    let body = message.content.unwrap_or_default();
                    let arrival = Arrival::from_body(id, &body)
                        .unwrap_or_else(|_| Arrival::new(id, "<undecodable>", 0));
                    let mut list = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
                    list.push(arrival);
                    count.send_replace(list.len());
                }
            })
        };
        Ok(Reader {
            arrivals,
            count,
            task,
        })
    }

    /// Deletes the queue and exchange and closes the connection.
    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(QueueDeleteArguments::new(&self.queue))
            .await;
        let _ = self
            .channel
            .exchange_delete(ExchangeDeleteArguments::new(&self.exchange))
            .await;
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

/// What a background consumer read so far.
#[derive(Debug)]
pub struct Reader {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    count: Arc<watch::Sender<usize>>,
    task: JoinHandle<()>,
}

impl Reader {
    /// Arrivals so far, duplicates included.
    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the arrivals so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `n` arrivals were read; returns whether they were within
    /// `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let mut count = self.count.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the distinct messages read reach `n`, then until nothing
    /// more arrives for `quiet` (late duplicates), or until `timeout`; returns
    /// the arrivals.
    pub async fn settle(&self, n: usize, quiet: Duration, timeout: Duration) -> Vec<Arrival> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let distinct = distinct(&self.arrivals());
            if distinct >= n || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut seen = self.len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.len();
            if now == seen || tokio::time::Instant::now() >= deadline {
                break;
            }
            seen = now;
        }
        self.arrivals()
    }

    /// Stops reading; returns everything read.
    pub fn stop(self) -> Vec<Arrival> {
        self.task.abort();
        self.arrivals()
    }
}

/// How many different messages (by key and sequence number) are in `arrivals`.
pub fn distinct(arrivals: &[Arrival]) -> usize {
    arrivals
        .iter()
        .map(|a| (a.key.as_str(), a.seq))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Runs `rabbitmqctl` (or the command in `RABBITMQCTL`) with `args`; returns
/// its standard output.
fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut words = command.split_whitespace();
    let program = words.next().context("RABBITMQCTL names no command")?;
    let output = std::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .with_context(|| format!("run {command}"))?;
    if !output.status.success() {
        bail!(
            "{command} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Has the broker close every connection whose client-provided name
/// (`connection_name` client property) is `name`, leaving everyone else's
/// alone; returns how many were closed.
///
/// # Errors
///
/// When `rabbitmqctl` fails.
pub fn close_connections_named(name: &str) -> anyhow::Result<usize> {
    // One line per connection: the pid (`<rabbit@host.1.2.3>`, the form
    // `close_connection` takes), a tab, then the client properties, which
    // hold `{"connection_name","..."}`.
    let listing = rabbitmqctl(&[
        "list_connections",
        "--silent",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])?;
    let wanted = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in listing.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if !properties.contains(&wanted) {
            continue;
        }
        rabbitmqctl(&[
            "close_connection",
            pid.trim(),
            "closed by a fault-injection test",
        ])?;
        closed += 1;
    }
    Ok(closed)
}
