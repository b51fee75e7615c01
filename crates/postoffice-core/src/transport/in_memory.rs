use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tower_service::Service;

use crate::EncodedMessage;

/// A transport that keeps what it receives, for tests and examples.
///
/// Clones share the same record, so keep one clone to read back what the
/// [`Producer`](crate::Producer) sent through another. Every send is
/// confirmed at once.
///
/// ```
/// use std::time::Duration;
/// use postoffice_core::transport::InMemory;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let received: InMemory<&str> = InMemory::default();
/// received.clone().oneshot("hello").await?;
/// let got = received.wait_for(1, Duration::from_secs(1)).await?;
/// assert_eq!(got, ["hello"]);
/// # Ok(())
/// # }
/// ```
pub struct InMemory<M = EncodedMessage> {
    shared: Arc<Shared<M>>,
}

struct Shared<M> {
    received: Mutex<Vec<M>>,
    count: watch::Sender<usize>,
}

impl<M> Default for InMemory<M> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                received: Mutex::new(Vec::new()),
                count: watch::Sender::new(0),
            }),
        }
    }
}

impl<M> Clone for InMemory<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> fmt::Debug for InMemory<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemory")
            .field("received", &self.len())
            .finish()
    }
}

/// [`InMemory::wait_for`] gave up before enough messages arrived.
#[derive(Debug, thiserror::Error)]
#[error("waited {waited:?} for {wanted} messages, {received} arrived")]
pub struct WaitTimeout {
    /// How many messages were awaited.
    pub wanted: usize,
    /// How many arrived.
    pub received: usize,
    /// How long the wait lasted.
    pub waited: Duration,
}

impl<M> InMemory<M> {
    /// How many messages arrived so far.
    pub fn len(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of everything received, in arrival order.
    pub fn messages(&self) -> Vec<M>
    where
        M: Clone,
    {
        self.lock().clone()
    }

    /// Removes and returns everything received so far.
    pub fn take(&self) -> Vec<M> {
        let taken = std::mem::take(&mut *self.lock());
        self.shared.count.send_replace(0);
        taken
    }

    /// Waits until at least `n` messages arrived, then returns a copy of all of
    /// them.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when fewer than `n` arrived within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<M>, WaitTimeout>
    where
        M: Clone,
    {
        let mut count = self.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, count.wait_for(|&c| c >= n)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.messages()),
            _ => Err(WaitTimeout {
                wanted: n,
                received: self.len(),
                waited: timeout,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<M>> {
        // A panic elsewhere while holding the lock leaves a valid Vec.
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M: Send + 'static> Service<M> for InMemory<M> {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: M) -> Self::Future {
        let mut received = self.lock();
        received.push(message);
        let count = received.len();
        drop(received);
        self.shared.count.send_replace(count);
        ready(Ok(()))
    }
}
