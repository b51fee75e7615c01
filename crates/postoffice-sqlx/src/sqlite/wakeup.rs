//! In-process wake-up at commit: publishers and pollers of one database file
//! and table share a counter; a commit hook armed by the publish bumps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;

/// A wake-up counter; every waiting poller sees a change.
pub(crate) type Wakeups = Arc<watch::Sender<u64>>;

/// The counters of every outbox in this process, by database file and table.
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<watch::Sender<u64>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The counter shared by every store and poller of `table` in the database
/// file that `pool` opens.
///
/// The file is named by its canonical path, so two pools opening the same
/// file under different paths share the counter too. An in-memory database
/// is named by its connect string.
pub(crate) fn for_table(pool: &SqlitePool, table: &str) -> Wakeups {
    let filename = pool.connect_options().get_filename().to_path_buf();
    let file = std::fs::canonicalize(&filename).unwrap_or(filename);
    let key = format!("{}\0{table}", file.display());

    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(wakeups) = registry.get(&key).and_then(Weak::upgrade) {
        return wakeups;
    }
    registry.retain(|_, counter| counter.strong_count() > 0);
    let wakeups = Arc::new(watch::Sender::new(0));
    registry.insert(key, Arc::downgrade(&wakeups));
    wakeups
}

/// Bumps the counter.
pub(crate) fn bump(wakeups: &watch::Sender<u64>) {
    wakeups.send_modify(|count| *count = count.wrapping_add(1));
}

/// Arms `conn` so that its next commit bumps `wakeups`, and its next rollback
/// disarms it.
///
/// SQLite calls the commit hook while the commit is under way, before other
/// connections can read its rows, so a woken poller must wait for the write
/// lock (see [`barrier`]) before it reads.
///
/// NOTE: a connection has one commit hook and one rollback hook; this replaces
/// any hooks the application set on the connection.
pub(crate) async fn arm(conn: &mut SqliteConnection, wakeups: &Wakeups) -> Result<(), sqlx::Error> {
    let armed = Arc::new(AtomicBool::new(true));
    let mut handle = conn.lock_handle().await?;

    let on_commit = Arc::clone(&armed);
    let counter = Arc::clone(wakeups);
    handle.set_commit_hook(move || {
        if on_commit.swap(false, Ordering::AcqRel) {
            bump(&counter);
        }
        // Never veto the commit.
        true
    });
    handle.set_rollback_hook(move || armed.store(false, Ordering::Release));
    Ok(())
}

/// Waits until no transaction holds the database's write lock, so that a
/// commit whose hook already ran is finished and its rows are readable.
///
/// Takes the write lock with `begin immediate` and gives it back at once; it
/// waits as long as the pool's busy timeout allows. A failure is logged and
/// ignored: the poll that follows finds the rows, or the next one does.
pub(crate) async fn barrier(pool: &SqlitePool) {
    let result = match pool.begin_with("begin immediate").await {
        Ok(tx) => tx.rollback().await,
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        tracing::debug!(%error, "waiting for the committing transaction failed");
    }
}
