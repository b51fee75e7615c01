//! The response future of [`RabbitMq`](crate::RabbitMq).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use postoffice_core::{MessageId, SendError};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::Error;
use crate::service::Shared;

/// Resolves when the broker confirmed the message, or with the reason it did
/// not.
///
/// The error is a [`SendError`] whose source is the crate's [`Error`];
/// its kind follows [`Error::is_permanent`].
///
/// # Cancel safety
///
/// Dropping the future abandons the wait. A message still queued is then not
/// published; one already published may still reach the broker.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture {
    #[pin]
    state: State,
    /// Present until the outcome was handed out.
    watch: Option<Watch>,
}

#[pin_project(project = StateProj)]
enum State {
    Waiting {
        #[pin]
        reply: oneshot::Receiver<Result<(), Error>>,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
    },
    Failed(Option<Error>),
}

/// What the future needs to keep per-key order after a failure; it also keeps
/// the transport's publisher alive while the call is pending.
struct Watch {
    shared: Arc<Shared>,
    id: MessageId,
    key: Vec<u8>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.watch.as_ref().map(|watch| watch.id);
        f.debug_struct("ResponseFuture")
            .field("message_id", &id)
            .finish_non_exhaustive()
    }
}

impl ResponseFuture {
    pub(crate) fn waiting(
        shared: Arc<Shared>,
        id: MessageId,
        key: Vec<u8>,
        reply: oneshot::Receiver<Result<(), Error>>,
        deadline: Instant,
        timeout: Duration,
    ) -> Self {
        Self {
            state: State::Waiting {
                reply,
                deadline: tokio::time::sleep_until(deadline),
                timeout,
            },
            watch: Some(Watch { shared, id, key }),
        }
    }

    /// A call that failed before it was queued.
    pub(crate) fn failed(shared: Arc<Shared>, key: Vec<u8>, error: Error) -> Self {
        let id = error.message_id().unwrap_or(MessageId::new(0));
        // Block the key at once: the caller may call again with the next
        // message of this key before it polls this future.
        shared.order.fail(&key, id);
        Self {
            state: State::Failed(Some(error)),
            watch: Some(Watch { shared, id, key }),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<(), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let id = this
            .watch
            .as_ref()
            .map_or(MessageId::new(0), |watch| watch.id);
        let result = match this.state.project() {
            StateProj::Waiting {
                reply,
                deadline,
                timeout,
            } => match reply.poll(cx) {
                Poll::Ready(Ok(result)) => result,
                Poll::Ready(Err(_closed)) => Err(Error::ConnectionLost { id }),
                Poll::Pending => match deadline.poll(cx) {
                    Poll::Ready(()) => Err(Error::ConfirmTimeout {
                        id,
                        timeout: *timeout,
                    }),
                    Poll::Pending => return Poll::Pending,
                },
            },
            StateProj::Failed(error) => Err(error.take().unwrap_or(Error::Stopped)),
        };
        if let (Err(_), Some(watch)) = (&result, this.watch.take()) {
            // The caller sees the failure now: later calls of this key pass.
            watch.shared.order.fail(&watch.key, watch.id);
            watch.shared.order.seen(&watch.key);
        }
        *this.watch = None;
        Poll::Ready(result.map_err(SendError::from))
    }
}

#[pinned_drop]
impl PinnedDrop for ResponseFuture {
    fn drop(self: Pin<&mut Self>) {
        if let Some(watch) = self.project().watch.take() {
            watch.shared.order.seen(&watch.key);
        }
    }
}
