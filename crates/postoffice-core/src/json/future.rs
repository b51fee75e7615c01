//! The response future of [`Json`](super::Json), also used by other encoding
//! layers (the CloudEvents layer) whose only failure is an encoding error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::BoxError;

/// Resolves with the inner transport's answer, or with the encoding error.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F> {
    Sending(#[pin] F),
    Failed(Option<BoxError>),
}

impl<F> ResponseFuture<F> {
    /// A future waiting for the inner service's answer.
    pub fn sending(inner: F) -> Self {
        Self {
            state: State::Sending(inner),
        }
    }

    /// A future that fails with `error` (an encoding failure) on first poll.
    pub fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending(inner) => inner.poll(cx).map_err(Into::into),
            StateProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}
