//! Errors of the CloudEvents layer.

/// Why an extension attribute name was refused when configuring a
/// [`JsonCloudEventsLayer`](crate::JsonCloudEventsLayer).
///
/// CloudEvents 1.0 allows attribute names made of lowercase ASCII letters and
/// digits only, asks that they stay within 20 characters, and keeps the names
/// of its own context attributes for itself. This crate enforces all three, so
/// that an event it writes is accepted by every SDK and binding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtensionNameError {
    /// The name is the empty string.
    #[error("extension attribute name is empty")]
    Empty,
    /// The name holds a character other than `a`-`z` and `0`-`9`.
    #[error("extension attribute name {name:?} has the invalid character {character:?}")]
    InvalidCharacter {
        /// The refused name.
        name: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// The name is longer than [`MAX_EXTENSION_NAME_LEN`](crate::MAX_EXTENSION_NAME_LEN).
    #[error("extension attribute name {name:?} is {len} characters long; at most 20 are allowed")]
    TooLong {
        /// The refused name.
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name belongs to a CloudEvents context attribute such as `id` or `time`.
    #[error("extension attribute name {name:?} is reserved for a cloudevents context attribute")]
    Reserved {
        /// The refused name.
        name: String,
    },
    /// The layer already maps an extension attribute of this name.
    #[error("extension attribute {name:?} is configured twice")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
}

/// Why one message could not be turned into a CloudEvent.
///
/// The [`JsonCloudEvents`](crate::JsonCloudEvents) service wraps this error in
/// a permanent [`SendError`](postoffice_core::SendError): the same message would
/// fail the same way on every try.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message headers could not be serialized as JSON.
    #[error("the message headers could not be serialized as json")]
    Headers(#[source] serde_json::Error),
    /// The message payload could not be serialized as JSON.
    #[error("the message payload could not be serialized as json")]
    Payload(#[source] serde_json::Error),
    /// The structured-mode envelope could not be written.
    #[error("the cloudevents envelope could not be written")]
    Envelope(#[source] serde_json::Error),
    /// A required attribute (`source` or `type`) came out as the empty string.
    #[error("the cloudevents {attribute} attribute is empty")]
    EmptyAttribute {
        /// `"source"` or `"type"`.
        attribute: &'static str,
    },
    /// A header mapped to an extension attribute holds a JSON object or array,
    /// which no CloudEvents attribute type can carry.
    #[error("extension attribute {name:?} would get a json {kind}, which no attribute type holds")]
    ExtensionValue {
        /// The extension attribute.
        name: String,
        /// `"object"` or `"array"`.
        kind: &'static str,
    },
}
