use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Why a message did not reach Kafka.
///
/// The [`Kafka`](crate::Kafka) service wraps it in a
/// [`SendError`](postoffice_core::SendError) that tells the relay whether to
/// try again; [`ProduceError::is_permanent`] gives that classification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The local producer queue stayed full for the whole queue timeout.
    #[error("the local producer queue stayed full for {waited:?}")]
    QueueFull {
        /// How long the service waited for room.
        waited: Duration,
    },
    /// librdkafka refused to queue the message.
    #[error("the message could not be queued for topic {topic}")]
    Enqueue {
        /// The topic the message was meant for.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The delivery report carried an error.
    #[error("kafka did not accept the message for topic {topic}")]
    Delivery {
        /// The topic the message was meant for.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// No delivery report arrived within the message timeout: the broker is
    /// slow or unreachable, or the topic does not exist (yet).
    ///
    /// librdkafka keeps the record queued and may still deliver it. A retry
    /// of the same message while the record is queued waits for that record
    /// instead of queueing a copy; a retry after its report arrived (the
    /// relay had given up on it) sends a copy, a duplicate for consumers.
    #[error(
        "no delivery report for topic {topic} within {waited:?} (is the broker up and does the \
         topic exist?); the record stays queued in librdkafka and a retry waits for it instead \
         of sending a copy"
    )]
    Timeout {
        /// The topic the message was meant for.
        topic: String,
        /// The message timeout.
        waited: Duration,
    },
    /// The producer went away before it reported on the message.
    #[error("the producer closed without a delivery report")]
    Canceled,
}

impl ProduceError {
    /// Whether sending the same message again cannot succeed: it is larger than
    /// the producer or the broker accepts, or its topic name is invalid.
    ///
    /// Full queues, timeouts, lost connections and unknown topics (which may be
    /// created later) are worth another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Enqueue { source, .. } | Self::Delivery { source, .. } => {
                source.rdkafka_error_code().is_some_and(is_permanent_code)
            }
            Self::QueueFull { .. } | Self::Timeout { .. } | Self::Canceled => false,
        }
    }
}

fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidRecord
    )
}

/// Why [`KafkaBuilder::build`](crate::KafkaBuilder::build) or
/// [`Kafka::flush`](crate::Kafka::flush) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaTransportError {
    /// Neither [`topic`](crate::KafkaBuilder::topic) nor
    /// [`topic_fn`](crate::KafkaBuilder::topic_fn) was set.
    #[error("no topic mapping was configured")]
    NoTopic,
    /// librdkafka refused the configuration.
    #[error("the kafka producer could not be created")]
    Create(#[source] KafkaError),
    /// Messages were still waiting for a delivery report when the flush
    /// deadline passed.
    #[error("{pending} messages were not confirmed within the flush deadline")]
    FlushTimeout {
        /// Messages still queued or in flight.
        pending: usize,
    },
    /// The flush failed for another reason.
    #[error("flushing the kafka producer failed")]
    Flush(#[source] KafkaError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let error = ProduceError::Delivery {
            topic: "t".into(),
            source: too_large,
        };
        assert!(error.is_permanent());
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let error = ProduceError::Delivery {
            topic: "t".into(),
            source: timeout,
        };
        assert!(!error.is_permanent());
        let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert!(
            !ProduceError::Enqueue {
                topic: "t".into(),
                source: full
            }
            .is_permanent()
        );
        assert!(
            !ProduceError::QueueFull {
                waited: Duration::from_secs(1)
            }
            .is_permanent()
        );
    }
}
