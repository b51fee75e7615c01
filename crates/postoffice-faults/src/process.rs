//! Processes the scenarios start, signal and kill: the relay binary and tansu
//! brokers.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
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

/// The workspace root (the directory holding `scripts/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tansu binary: `TANSU` when set, else the path `scripts/kafka.sh --bin`
/// prints (the script installs tansu first when it is missing, which takes
/// minutes).
///
/// # Errors
///
/// When the script fails or prints no existing path.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TANSU") {
        return Ok(path.into());
    }
    let root = workspace_root();
    let out = Command::new("bash")
        .arg("scripts/kafka.sh")
        .arg("--bin")
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run scripts/kafka.sh --bin in {}", root.display()))?;
    if !out.status.success() {
        bail!("scripts/kafka.sh --bin failed: {}", out.status);
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_file() {
        bail!(
            "scripts/kafka.sh --bin printed {}, which is not a file",
            path.display()
        );
    }
    Ok(path)
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

/// A tansu broker of the test's own, storing in SQLite (`tansu.db` in a
/// temporary directory), so that it keeps its records when it is stopped and
/// started again on the same directory and port.
///
/// The broker's output goes to `tansu.log` in the directory, across restarts;
/// the directory is removed and a running broker killed on drop.
#[derive(Debug)]
pub struct SqliteBroker {
    // Declared before `dir`, so that the broker is killed before its
    // directory is removed.
    guard: Option<Guard>,
    dir: tempfile::TempDir,
    binary: PathBuf,
    port: u16,
    starts: u32,
}

impl SqliteBroker {
    /// Starts a broker on a free local port in a new temporary directory and
    /// waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// When tansu cannot be found or started, or does not listen within 30 s.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = tansu_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("postoffice-tansu-")
            .tempdir()
            .context("temporary directory for the broker")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let mut broker = Self {
            guard: None,
            dir,
            binary,
            port,
            starts: 0,
        };
        broker.restart().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory holding `tansu.db` and `tansu.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running broker's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(Guard::pid)
    }

    /// Whether the broker process is running.
    pub fn running(&mut self) -> bool {
        self.guard.as_mut().is_some_and(Guard::running)
    }

    /// Sends `signal_name` (`-KILL`, `-TERM`) to the broker and waits up to
    /// 10 s for it to exit, killing it after that.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub async fn stop(&mut self, signal_name: &str) -> anyhow::Result<()> {
        match self.guard.take() {
            Some(mut guard) => guard.stop(signal_name, Duration::from_secs(10)).await,
            None => Ok(()),
        }
    }

    /// Starts the broker (again) on the same directory and port and waits
    /// until it accepts connections; a broker still running is killed first.
    ///
    /// # Errors
    ///
    /// When tansu cannot be started or does not listen within 30 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop("-KILL").await?;
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .context("open tansu.log")?;
        writeln!(log, "==> start {} on port {}", self.starts, self.port)?;
        let url = format!("tcp://{}", self.address());
        let mut command = Command::new(&self.binary);
        command
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.guard = Some(Guard::spawn(command)?);
        let listening = wait_listening(&self.address(), Duration::from_secs(30)).await;
        if let Err(err) = listening {
            return Err(err.context(format!("tansu log:\n{}", self.log())));
        }
        Ok(())
    }

    /// What the broker printed so far, over every start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}
