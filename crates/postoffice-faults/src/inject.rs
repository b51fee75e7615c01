//! Transport middleware that injects faults: [`Slow`] delays every send,
//! [`Flaky`] fails a share of them at random.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use postoffice_core::{BoxError, SendError};
use tower::Service;

/// Waits `delay` before handing each message to the inner service, so sends
/// stay in flight for a while.
#[derive(Debug, Clone)]
pub struct Slow<S> {
    inner: S,
    delay: Duration,
}

impl<S> Slow<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl<S, R> Service<R> for Slow<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The readied service goes with the call; a fresh clone stays.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// Counts of what a [`Flaky`] service did; clones share them.
#[derive(Debug, Clone, Default)]
pub struct FlakyStats {
    calls: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    unconfirmed: Arc<AtomicU64>,
}

impl FlakyStats {
    /// Sends asked for.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Sends failed before reaching the inner service.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends that reached the inner service but were reported failed (a lost
    /// confirmation).
    pub fn unconfirmed(&self) -> u64 {
        self.unconfirmed.load(Ordering::Relaxed)
    }
}

/// Fails a share of sends at random with a retryable [`SendError`]: half of
/// the failures before the message reaches the inner service (nothing sent),
/// half after it was sent (the confirmation is lost, so the retry is a
/// duplicate).
#[derive(Debug, Clone)]
pub struct Flaky<S> {
    inner: S,
    rate: f64,
    stats: FlakyStats,
}

impl<S> Flaky<S> {
    /// Wraps `inner`, failing a share `rate` (0 to 1) of the sends.
    pub fn new(inner: S, rate: f64) -> Self {
        Self {
            inner,
            rate: rate.clamp(0.0, 1.0),
            stats: FlakyStats::default(),
        }
    }

    /// What the service did so far.
    pub fn stats(&self) -> FlakyStats {
        self.stats.clone()
    }
}

impl<S, R> Service<R> for Flaky<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let fail = rand::random::<f64>() < self.rate;
        if fail && rand::random::<bool>() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let error = SendError::retryable("injected failure before sending");
            return Box::pin(async move { Err(error.into()) });
        }
        let sent = self.inner.call(request);
        let unconfirmed = Arc::clone(&self.stats.unconfirmed);
        Box::pin(async move {
            let response = sent.await.map_err(Into::into)?;
            if fail {
                unconfirmed.fetch_add(1, Ordering::Relaxed);
                return Err(SendError::retryable("injected loss of the confirmation").into());
            }
            Ok(response)
        })
    }
}
