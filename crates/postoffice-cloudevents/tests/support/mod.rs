//! Shared helpers of the integration tests.

use chrono::{DateTime, Utc};
use postoffice_core::{Message, MessageId};

/// A 19-digit outbox id.
pub(crate) const ID: i64 = 1_234_567_890_123_456_789;

/// The creation time every test message carries, with microseconds as
/// Postgres stores them.
pub(crate) const TIME: &str = "2026-12-03T16:21:47.123456Z";

pub(crate) fn created_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(TIME)
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) fn message<H, P>(headers: H, payload: P) -> Message<H, P> {
    Message::new(
        MessageId::new(ID),
        b"order-7".to_vec(),
        3,
        headers,
        payload,
        0,
        created_at(),
        None,
    )
}
