//! Processes the scenarios start, signal and kill: the relay binary and tansu
//! brokers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Sends `signal` (for example `-STOP`) to `pid` with `kill`.
///
/// # Errors
///
/// When `kill` fails.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill {signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid of the local process listening on TCP `port`, as `ss` reports it.
pub fn listening_pid(port: u16) -> Option<u32> {
    let filter = format!("sport = :{port}");
    let out = Command::new("ss").args(["-ltnpH", &filter]).output().ok()?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = listing.split("pid=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The cache directory `scripts/kafka.sh` installs tansu into.
pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("POSTOFFICE_CACHE") {
        return dir.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    PathBuf::from(base).join("postoffice")
}

/// The tansu binary `scripts/kafka.sh` installs (`TANSU` overrides).
pub fn tansu_binary() -> PathBuf {
    std::env::var("TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join("tansu/bin/tansu"))
}

/// The pid of the shared broker at `KAFKA_BROKERS`: the one in
/// `TANSU_PID_FILE` when set, else the local process listening on the broker
/// port, else the one in the pid file `scripts/kafka.sh` writes.
///
/// # Errors
///
/// When the broker is not local or no live pid is found.
pub fn shared_broker_pid() -> anyhow::Result<u32> {
    let read = |file: PathBuf| -> Option<u32> {
        let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    };
    if let Ok(file) = std::env::var("TANSU_PID_FILE") {
        return read(file.clone().into())
            .with_context(|| format!("TANSU_PID_FILE={file} holds no live pid"));
    }
    let brokers = crate::kafka::brokers();
    let first = brokers.split(',').next().unwrap_or_default();
    let (host, port) = first.rsplit_once(':').unwrap_or((first, "9092"));
    if !["127.0.0.1", "localhost", "[::1]"].contains(&host) {
        bail!("KAFKA_BROKERS={brokers} is not local; set TANSU_PID_FILE to freeze a broker");
    }
    let port: u16 = port.parse().context("KAFKA_BROKERS port")?;
    if let Some(pid) = listening_pid(port) {
        return Ok(pid);
    }
    read(cache_dir().join("tansu.pid")).context(
        "no process listens on the broker port and the pid file of scripts/kafka.sh holds \
         no live pid (start the broker with scripts/kafka.sh)",
    )
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves
/// nothing running.
#[derive(Debug)]
pub struct Guard {
    child: Option<Child>,
}

impl Guard {
    /// Starts `command` with standard input closed.
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {command:?}"))?;
        Ok(Self { child: Some(child) })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Sends `signal` and waits up to `timeout` for the child to exit,
    /// killing it after that.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub async fn stop(&mut self, signal_name: &str, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), signal_name)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts TCP connections on `address`.
///
/// # Errors
///
/// When nothing does within `timeout`.
pub async fn wait_listening(address: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listens on {address} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
