//! The sending side: [`Transport`] wraps any `tower::Service` that delivers
//! messages, and [`InMemory`] is a transport for tests.

mod in_memory;

use std::task::{Context, Poll};

use futures_util::TryFutureExt;
use futures_util::future::MapErr;
use tower_service::Service;

use crate::BoxError;

pub use in_memory::{InMemory, WaitTimeout};

/// The transport a [`Producer`](crate::Producer) sends through: any service
/// that takes the poller's messages (or, behind an encoding layer, encoded
/// messages) and resolves once the broker confirmed them.
///
/// Compose middleware with a `tower::ServiceBuilder` before wrapping:
///
/// ```
/// use std::time::Duration;
/// use postoffice_core::{EncodedMessage, JsonLayer, Transport, transport::InMemory};
/// use tower::ServiceBuilder;
///
/// let received: InMemory<EncodedMessage> = InMemory::default();
/// let transport = Transport::new(
///     ServiceBuilder::new()
///         .concurrency_limit(8)
///         .layer(JsonLayer::new())
///         .service(received.clone()),
/// );
/// # let _ = transport;
/// ```
///
/// A resolved `Ok` means "confirmed": the message is then removed from the
/// outbox. Errors are boxed; a [`SendError`](crate::SendError) anywhere in the
/// source chain says whether the failure is permanent.
#[derive(Debug, Clone)]
pub struct Transport<S> {
    inner: S,
}

impl<S> Transport<S> {
    /// Wraps a sending service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for Transport<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = MapErr<S::Future, fn(S::Error) -> BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner
            .call(request)
            .map_err(Into::into as fn(S::Error) -> BoxError)
    }
}
