//! Error types shared by every store and transport.

use std::error::Error as StdError;

/// A type-erased error, as tower uses.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a publish call failed. Nothing of the call was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The headers or payload of the message at `index` could not be serialized.
    #[error("message {index} could not be serialized")]
    Serialize {
        /// Position of the message in the published batch.
        index: usize,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The message at `index` holds a NUL character (`\u0000`), which Postgres
    /// text and jsonb columns refuse.
    #[error("message {index} has a NUL character in its {field}, which the store cannot hold")]
    NulCharacter {
        /// Position of the message in the published batch.
        index: usize,
        /// `"headers"` or `"payload"`.
        field: &'static str,
    },
    /// The store refused or failed the write.
    #[error("the store failed to write the messages")]
    Store(#[source] BoxError),
}

/// How a transport classifies a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Worth trying again later (connection lost, timeout, full queue, nack).
    Retryable,
    /// Will fail the same way on every try (too large, refused for good); the
    /// message goes to the dead letters.
    Permanent,
}

/// A failed send, classified by the transport that saw it.
///
/// Errors that are not a `SendError` anywhere in their source chain (for example
/// tower's `Elapsed` from a timeout layer) count as retryable.
#[derive(Debug, thiserror::Error)]
#[error("{kind_text} send failure")]
pub struct SendError {
    kind: SendErrorKind,
    kind_text: &'static str,
    #[source]
    source: BoxError,
}

impl SendError {
    /// A failure worth trying again.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        Self {
            kind: SendErrorKind::Retryable,
            kind_text: "retryable",
            source: source.into(),
        }
    }

    /// A failure that will not go away by trying again.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: SendErrorKind::Permanent,
            kind_text: "permanent",
            source: source.into(),
        }
    }

    /// The classification.
    pub fn kind(&self) -> SendErrorKind {
        self.kind
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == SendErrorKind::Permanent
    }
}

/// Whether any error in `error`'s source chain is a permanent [`SendError`].
pub fn is_permanent(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(send) = current.downcast_ref::<SendError>() {
            return send.is_permanent();
        }
        next = current.source();
    }
    false
}

/// Renders an error with its source chain on one line, for logs and for
/// storing as a reason. NUL characters, which Postgres text refuses, become
/// U+FFFD.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(current) = next {
        text.push_str(": ");
        text.push_str(&current.to_string());
        next = current.source();
    }
    if text.contains('\0') {
        text = text.replace('\0', "\u{fffd}");
    }
    text
}

/// Why [`Producer::run`](crate::Producer::run) stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// The poller reported that it can never serve again (for example its
    /// configuration does not match the stored schema).
    #[error("the poller failed for good")]
    Poller(#[source] BoxError),
}

/// A decode failure for one stored row.
#[derive(Debug, thiserror::Error)]
#[error("stored message {id} does not decode into the poller's types")]
pub struct DecodeError {
    /// Id of the row.
    pub id: crate::MessageId,
    /// The deserializer's error.
    #[source]
    pub source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanence_is_found_in_the_chain() {
        let inner = SendError::permanent("too large");
        let wrapped: BoxError = Box::new(PublishError::Store(Box::new(inner)));
        assert!(is_permanent(wrapped.as_ref()));
        let retry: BoxError = Box::new(SendError::retryable("lost connection"));
        assert!(!is_permanent(retry.as_ref()));
        let plain: BoxError = "plain".into();
        assert!(!is_permanent(plain.as_ref()));
        assert_eq!(
            error_chain(wrapped.as_ref()),
            "the store failed to write the messages: permanent send failure: too large"
        );
    }
}
