//! The response future of [`Kafka`](crate::Kafka).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use pin_project::pin_project;
use postoffice_core::{MessageId, SendError};
use tokio::time::Sleep;

use crate::queued::{Failure, SharedDelivery};
use crate::{Delivered, ProduceError};

/// Resolves when librdkafka reports on the message: `Ok` once the broker
/// stored it with `acks=all`, or the classified failure; a retryable
/// [`ProduceError::Timeout`] when no report came within the message timeout.
///
/// When the call was a retry of a record librdkafka still held, the future
/// waits for that record's report (with a deadline of its own) instead of a
/// new copy's.
#[pin_project]
pub struct ResponseFuture {
    #[pin]
    state: State,
}

#[pin_project(project = StateProj)]
enum State {
    Delivering {
        delivery: SharedDelivery,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
        id: MessageId,
        topic: String,
    },
    Failed(Option<SendError>),
}

impl ResponseFuture {
    pub(crate) fn delivering(
        delivery: SharedDelivery,
        timeout: Duration,
        id: MessageId,
        topic: String,
    ) -> Self {
        let deadline = tokio::time::sleep(timeout);
        Self {
            state: State::Delivering {
                delivery,
                deadline,
                timeout,
                id,
                topic,
            },
        }
    }

    pub(crate) fn failed(error: SendError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Delivering { id, topic, .. } => f
                .debug_struct("ResponseFuture")
                .field("message_id", id)
                .field("topic", topic)
                .finish_non_exhaustive(),
            State::Failed(error) => f
                .debug_struct("ResponseFuture")
                .field("failed", error)
                .finish(),
        }
    }
}

/// Wraps a produce failure with its classification.
pub(crate) fn classify(error: ProduceError) -> SendError {
    if error.is_permanent() {
        SendError::permanent(error)
    } else {
        SendError::retryable(error)
    }
}

impl Future for ResponseFuture {
    type Output = Result<Delivered, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let outcome = match state.as_mut().project() {
            StateProj::Delivering {
                delivery,
                deadline,
                timeout,
                id,
                topic,
            } => {
                let Poll::Ready(report) = delivery.poll_unpin(cx) else {
                    return match deadline.poll(cx) {
                        Poll::Ready(()) => {
                            let topic = std::mem::take(topic);
                            let waited = *timeout;
                            let error = classify(ProduceError::Timeout { topic, waited });
                            state.set(State::Failed(None));
                            Poll::Ready(Err(error))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                };
                match report {
                    Ok(delivered) => {
                        tracing::trace!(
                            message_id = %id,
                            topic = %topic,
                            kafka_partition = delivered.partition,
                            offset = delivered.offset,
                            "message delivered"
                        );
                        Ok(delivered)
                    }
                    Err(Failure::Kafka(source)) => {
                        let topic = std::mem::take(topic);
                        Err(classify(ProduceError::Delivery { topic, source }))
                    }
                    Err(Failure::Canceled) => Err(classify(ProduceError::Canceled)),
                }
            }
            StateProj::Failed(error) => {
                return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                    SendError::retryable("response future polled after completion")
                })));
            }
        };
        // A shared delivery must not be polled again once it finished.
        state.set(State::Failed(None));
        Poll::Ready(outcome)
    }
}
