//! The wake-up listener: a background task that holds a `LISTEN` connection
//! and counts notifications, so that waiting pollers return early.

use std::sync::Arc;
use std::time::Duration;

use postoffice_core::retry::Backoff;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

/// `application_name` of the listener's connection, to find it in
/// `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "postoffice-listener";

/// Starts listening on `channel` and returns once `LISTEN` ran, so that no
/// commit after this call goes unnoticed. The task bumps `wakeups` for each
/// notification and after every reconnection, and stops when the returned
/// guard drops.
///
/// The listener uses its own connection, made with the options of `pool` but
/// outside of it, so it takes no connection from the application's pool.
pub(crate) async fn spawn(
    pool: &PgPool,
    channel: String,
    wakeups: Arc<watch::Sender<u64>>,
) -> Result<DropGuard, sqlx::Error> {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(APPLICATION_NAME);
    let own_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own_pool).await?;
    listener.listen(&channel).await?;

    let token = CancellationToken::new();
    let span = tracing::debug_span!("outbox_listener", %channel);
    tokio::spawn(listen(listener, wakeups, token.clone()).instrument(span));
    Ok(token.drop_guard())
}

/// Bumps the wake-up counter; every waiting poller sees the change.
pub(crate) fn bump(wakeups: &watch::Sender<u64>) {
    wakeups.send_modify(|count| *count = count.wrapping_add(1));
}

async fn listen(
    mut listener: PgListener,
    wakeups: Arc<watch::Sender<u64>>,
    token: CancellationToken,
) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut failures = 0_u32;
    tracing::debug!("listening for new messages");
    loop {
        let received = tokio::select! {
            () = token.cancelled() => break,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(_)) => {
                failures = 0;
                bump(&wakeups);
            }
            // The connection was lost and made again (the listener does that
            // itself); notifications sent meanwhile are lost, so wake anyway.
            Ok(None) => {
                failures = 0;
                tracing::warn!("listener connection lost, listening again");
                bump(&wakeups);
            }
            Err(error) => {
                let delay = backoff.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(%error, ?delay, "listening for new messages failed, retrying");
                bump(&wakeups);
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!("listener stopped");
}
