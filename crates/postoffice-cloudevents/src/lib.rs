//! CloudEvents 1.0 encoding for [Postoffice] transports, as a tower layer.
//!
//! [`JsonCloudEventsLayer`] sits in front of a broker transport and turns each
//! outbox [`Message`] into a CloudEvent whose `id` is the outbox message id,
//! so consumers can drop duplicates, and whose `time` is the moment the
//! message was published. Events are written in the JSON event format
//! (structured content mode) unless [`BinaryMode`] selects the binary content
//! mode of the Kafka or AMQP protocol binding. Either way the result reads
//! back with the [`cloudevents`] SDK, re-exported here.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use postoffice_cloudevents::{APPLICATION_CLOUDEVENTS_JSON, JsonCloudEventsLayer, cloudevents};
//! use postoffice_core::{Message, MessageId};
//! use cloudevents::AttributesReader;
//!
//! let layer = JsonCloudEventsLayer::new("/shop/orders", "com.example.order.created");
//! let created_at = Utc.with_ymd_and_hms(2026, 12, 3, 16, 21, 47).single().ok_or("no such time")?;
//! let message = Message::new(
//!     MessageId::new(42),
//!     b"order-7".to_vec(),
//!     3,
//!     serde_json::json!({ "kind": "created" }),
//!     serde_json::json!({ "order_id": 7, "total": "12.50" }),
//!     0,
//!     created_at,
//!     None,
//! );
//!
//! let encoded = layer.encode(&message)?;
//! assert_eq!(encoded.content_type, APPLICATION_CLOUDEVENTS_JSON);
//!
//! let event: cloudevents::Event = serde_json::from_slice(&encoded.body)?;
//! assert_eq!(event.id(), "42");
//! assert_eq!(event.ty(), "com.example.order.created");
//! assert_eq!(event.time(), Some(&created_at));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Exactness of the payload
//!
//! The payload is serialized once, by its own `Serialize` impl, and that JSON
//! text is copied unchanged into the event: it is the `data` member of a
//! structured event and the whole body of a binary one. Nothing in this layer
//! parses it again, so every digit of every number and every byte of text
//! (non-ASCII characters are written as UTF-8, not escaped) reaches the
//! broker exactly as the payload wrote it.
//!
//! What survives the trip around that step depends on the types at the ends:
//!
//! - Into the layer: the payload type must hold the number. A
//!   `serde_json::Value` holds integers from `i64::MIN` to `u64::MAX` exactly;
//!   a longer integer read from the store becomes an `f64` before the layer
//!   sees it (unless serde_json's `arbitrary_precision` feature is on). To
//!   carry such numbers, keep them in strings, or use
//!   `Box<serde_json::value::RawValue>` as the payload type, which holds the
//!   stored JSON text as it is.
//! - Out of the event: the `cloudevents` SDK reads an event through a
//!   `serde_json::Value`, so it returns strings (including numbers kept in
//!   strings) and integers up to 64 bits exactly, and turns longer integers
//!   and fractions into `f64` unless the reader enables `arbitrary_precision`.
//!   A reader that takes the `data` text as it is, such as a
//!   `Box<RawValue>` field, sees the exact digits.
//!
//! # Extension attributes
//!
//! Extension names are checked when the layer is configured
//! ([`validate_extension_name`]): a name that breaks the CloudEvents rules is
//! an [`ExtensionNameError`], never dropped or rewritten.
//!
//! [Postoffice]: https://github.com/postoffice-rs/postoffice

mod encode;
mod error;
pub mod future;
mod layer;
mod name;

use std::sync::Arc;
use std::task::{Context, Poll};

use postoffice_core::{BoxError, EncodedMessage, Message, SendError};
use serde::Serialize;
use tower_service::Service;

pub use cloudevents;
pub use cloudevents::event::ExtensionValue;
pub use error::{EncodeError, ExtensionNameError};
pub use layer::{BinaryMode, JsonCloudEventsLayer};
pub use name::{MAX_EXTENSION_NAME_LEN, RESERVED_NAMES, validate_extension_name};
/// The `datacontenttype` of every event, and the content type of a
/// binary-mode body.
pub use postoffice_core::json::APPLICATION_JSON;

use layer::Config;

/// The CloudEvents version this crate writes.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a structured-mode body (the JSON event format).
pub const APPLICATION_CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Encodes messages as CloudEvents before calling the inner transport; built
/// by [`JsonCloudEventsLayer`].
///
/// The inner service receives an [`EncodedMessage`] whose `headers` are the
/// message headers as JSON and whose body, content type and `attributes` hold
/// the event as the layer describes.
///
/// # Errors
///
/// A message that cannot be encoded (see [`EncodeError`]) fails with a
/// permanent [`SendError`] wrapping the `EncodeError`, without calling the
/// inner service: it would fail the same way on every try. The inner
/// service's errors are passed on boxed.
#[derive(Debug, Clone)]
pub struct JsonCloudEvents<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> JsonCloudEvents<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
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

impl<S, H, P> Service<Message<H, P>> for JsonCloudEvents<S>
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
        match encode::encode(&self.config, &message) {
            Ok(encoded) => future::ResponseFuture::sending(self.inner.call(encoded)),
            Err(error) => future::ResponseFuture::failed(SendError::permanent(error).into()),
        }
    }
}
