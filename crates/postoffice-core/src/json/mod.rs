//! JSON encoding as a tower layer: [`JsonLayer`] turns a [`Message`] into an
//! [`EncodedMessage`] with a JSON body.

pub mod future;
mod layer;

use std::task::{Context, Poll};

use serde::Serialize;
use tower_service::Service;

use crate::{BoxError, EncodedMessage, Message, SendError};

pub use layer::JsonLayer;

/// The MIME type [`Json`] sets unless configured otherwise.
pub const APPLICATION_JSON: &str = "application/json";

/// Encodes headers and payload as JSON before calling the inner transport.
///
/// The body is the payload as JSON; the headers become
/// [`EncodedMessage::headers`], which broker transports copy onto the broker
/// message. A value that fails to serialize is a permanent
/// [`SendError`]: it would fail the same way on every try.
#[derive(Debug, Clone)]
pub struct Json<S> {
    inner: S,
    content_type: String,
}

impl<S> Json<S> {
    /// Wraps `inner`, labelling bodies `application/json`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            content_type: APPLICATION_JSON.to_owned(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Encodes a message the way [`Json`] does.
///
/// # Errors
///
/// The serializer's error when headers or payload cannot be written as JSON.
pub fn encode_json<H: Serialize, P: Serialize>(
    message: &Message<H, P>,
    content_type: &str,
) -> Result<EncodedMessage, serde_json::Error> {
    let headers = serde_json::to_value(&message.headers)?;
    let body = serde_json::to_vec(&message.payload)?;
    Ok(EncodedMessage::new(
        message.meta(),
        headers,
        content_type,
        body,
    ))
}

impl<S, H, P> Service<Message<H, P>> for Json<S>
where
    S: Service<EncodedMessage>,
    S::Error: Into<BoxError>,
    H: Serialize,
    P: Serialize,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message<H, P>) -> Self::Future {
        match encode_json(&message, &self.content_type) {
            Ok(encoded) => future::ResponseFuture::sending(self.inner.call(encoded)),
            Err(error) => future::ResponseFuture::failed(SendError::permanent(error).into()),
        }
    }
}
