//! The transport's error type.

use std::time::Duration;

use postoffice_core::{MessageId, SendError};

/// Why a message was not confirmed by RabbitMQ, or why the transport could
/// not start.
///
/// The service hands these to the producer wrapped in a [`SendError`] whose
/// kind follows [`Error::is_permanent`]: only [`Error::TooLarge`],
/// [`Error::HeadersTooLarge`] and [`Error::InvalidProperty`] are permanent (the message would fail the same
/// way on every try and goes to the dead letters); everything else is worth
/// trying again later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first connection to the broker failed.
    #[error("could not connect to the broker")]
    Connect(#[source] lapin::Error),
    /// The broker returned the message as unroutable: no queue is bound for
    /// its routing key (the message is published with `mandatory`).
    #[error(
        "message {id} was returned as unroutable by exchange {exchange:?} with routing key {routing_key:?} ({reply_code} {reply_text})"
    )]
    Unroutable {
        /// The message.
        id: MessageId,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply code (312 for `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker refused the message with a negative confirm.
    #[error("message {id} was nacked by the broker")]
    Nacked {
        /// The message.
        id: MessageId,
    },
    /// No confirm arrived in time, counted from the call (so it includes the
    /// wait for a reconnection).
    #[error("message {id} was not confirmed within {timeout:?}")]
    ConfirmTimeout {
        /// The message.
        id: MessageId,
        /// The configured confirm timeout.
        timeout: Duration,
    },
    /// The channel or the connection failed before the message was confirmed;
    /// the transport reconnects by itself.
    #[error("the connection to the broker failed before message {id} was confirmed")]
    Connection {
        /// The message.
        id: MessageId,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// The connection was lost (or the transport stopped) while the message
    /// waited to be published or confirmed.
    #[error("the connection to the broker was lost before message {id} was confirmed")]
    ConnectionLost {
        /// The message.
        id: MessageId,
    },
    /// An earlier message with the same partition key failed and the
    /// producer had not seen that failure yet when this one was called; it is
    /// held back so that the key's order holds, and sent again in order.
    #[error("message {id} was held back because an earlier message with its key failed")]
    HeldBack {
        /// The message.
        id: MessageId,
    },
    /// The body is larger than the configured maximum message size.
    #[error("message {id} has a body of {size} bytes, above the maximum of {max} bytes")]
    TooLarge {
        /// The message.
        id: MessageId,
        /// The body size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The AMQP properties, headers included, do not fit in one frame of the
    /// size negotiated with the broker (`frame_max`, 128 KiB by default), so
    /// the broker would close the connection on the publish.
    #[error(
        "message {id} has properties and headers of {size} bytes, above the broker's frame size of {max} bytes"
    )]
    HeadersTooLarge {
        /// The message.
        id: MessageId,
        /// The size of the content header frame.
        size: usize,
        /// The negotiated frame size.
        max: usize,
    },
    /// A routing key, exchange name, content type or header name does not fit
    /// in an AMQP short string (255 bytes).
    #[error("message {id} has a {field} longer than 255 bytes")]
    InvalidProperty {
        /// The message.
        id: MessageId,
        /// Which field: `"exchange"`, `"routing key"`, `"content type"`,
        /// `"message id"` or `"header name"`.
        field: &'static str,
    },
    /// The service was called without a successful `poll_ready` first.
    #[error("message {id} was sent without poll_ready reserving a slot first")]
    NotReady {
        /// The message.
        id: MessageId,
    },
    /// The background publisher is gone (its runtime shut down).
    #[error("the transport's publisher task has stopped")]
    Stopped,
}

impl Error {
    /// Whether trying the same message again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::TooLarge { .. } | Self::HeadersTooLarge { .. } | Self::InvalidProperty { .. }
        )
    }

    /// The message this error is about, if it is about one.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            Self::Unroutable { id, .. }
            | Self::Nacked { id }
            | Self::ConfirmTimeout { id, .. }
            | Self::Connection { id, .. }
            | Self::ConnectionLost { id }
            | Self::HeldBack { id }
            | Self::TooLarge { id, .. }
            | Self::HeadersTooLarge { id, .. }
            | Self::InvalidProperty { id, .. }
            | Self::NotReady { id } => Some(*id),
            Self::Connect(_) | Self::Stopped => None,
        }
    }
}

impl From<Error> for SendError {
    fn from(error: Error) -> Self {
        if error.is_permanent() {
            SendError::permanent(error)
        } else {
            SendError::retryable(error)
        }
    }
}
