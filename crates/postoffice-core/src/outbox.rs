//! The publishing front: [`Outbox`] serializes messages and hands them to a store
//! inside the caller's transaction.

use serde::Serialize;
use tower::ServiceExt;
use tower_service::Service;

use crate::{NewMessage, PartitionKey, PublishError};

/// A publish request for a store: messages to write inside `tx`.
///
/// Stores are `tower::Service<Publish<'t, Tx>>` for each transaction or
/// connection type they can write through, answering `()` on success.
#[derive(Debug)]
#[non_exhaustive]
pub struct Publish<'t, Tx: ?Sized> {
    /// The serialized messages, in publish order.
    pub messages: Vec<NewMessage>,
    /// The caller's transaction (or connection).
    pub tx: &'t mut Tx,
}

impl<'t, Tx: ?Sized> Publish<'t, Tx> {
    /// Builds a request.
    pub fn new(messages: Vec<NewMessage>, tx: &'t mut Tx) -> Self {
        Self { messages, tx }
    }
}

/// The front through which a service publishes messages.
///
/// ```
/// # use postoffice_core::{Outbox, PartitionKey, memory::InMemoryOutbox};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Headers { order: u64 }
/// # impl PartitionKey for Headers {
/// #     fn partition_key(&self) -> Vec<u8> { self.order.to_be_bytes().to_vec() }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryOutbox::default();
/// let outbox = Outbox::new(store.clone());
///
/// let mut tx = store.begin();
/// outbox
///     .publish_messages([(Headers { order: 1 }, "created")], &mut tx)
///     .await?;
/// tx.commit();
/// # assert_eq!(store.pending(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox<S> {
    store: S,
}

impl<S> Outbox<S> {
    /// Wraps a store.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store.
    pub fn get_ref(&self) -> &S {
        &self.store
    }

    /// The store, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.store
    }

    /// Writes `messages` inside `tx`: they reach the relay if and only if `tx`
    /// commits. All messages of one call are written by one statement.
    ///
    /// # Errors
    ///
    /// [`PublishError::Serialize`] or [`PublishError::NulCharacter`] before
    /// anything is sent to the store (the transaction stays usable), or
    /// [`PublishError::Store`] when the write fails. In every case nothing of
    /// this call is written.
    pub async fn publish_messages<'t, Tx, I, H, P>(
        &self,
        messages: I,
        tx: &'t mut Tx,
    ) -> Result<(), PublishError>
    where
        Tx: ?Sized,
        I: IntoIterator<Item = (H, P)>,
        H: Serialize + PartitionKey,
        P: Serialize,
        S: Service<Publish<'t, Tx>, Response = (), Error = PublishError> + Clone,
    {
        let messages = encode_all(messages)?;
        if messages.is_empty() {
            return Ok(());
        }
        self.store.clone().oneshot(Publish::new(messages, tx)).await
    }

    /// Writes one message inside `tx`; see [`Outbox::publish_messages`].
    ///
    /// # Errors
    ///
    /// As for [`Outbox::publish_messages`].
    pub async fn publish<'t, Tx, H, P>(
        &self,
        headers: H,
        payload: P,
        tx: &'t mut Tx,
    ) -> Result<(), PublishError>
    where
        Tx: ?Sized,
        H: Serialize + PartitionKey,
        P: Serialize,
        S: Service<Publish<'t, Tx>, Response = (), Error = PublishError> + Clone,
    {
        self.publish_messages([(headers, payload)], tx).await
    }
}

fn encode_all<I, H, P>(messages: I) -> Result<Vec<NewMessage>, PublishError>
where
    I: IntoIterator<Item = (H, P)>,
    H: Serialize + PartitionKey,
    P: Serialize,
{
    let messages = messages.into_iter();
    let mut out = Vec::with_capacity(messages.size_hint().0);
    for (index, (headers, payload)) in messages.enumerate() {
        let serialize = |source| PublishError::Serialize { index, source };
        let headers_json = serde_json::to_string(&headers).map_err(serialize)?;
        let payload_json = serde_json::to_string(&payload).map_err(serialize)?;
        if has_nul(&headers_json) {
            return Err(PublishError::NulCharacter {
                index,
                field: "headers",
            });
        }
        if has_nul(&payload_json) {
            return Err(PublishError::NulCharacter {
                index,
                field: "payload",
            });
        }
        out.push(NewMessage {
            partition_key: headers.partition_key(),
            headers: headers_json,
            payload: payload_json,
        });
    }
    Ok(out)
}

/// Whether JSON text written by serde_json holds a NUL character, which it
/// always writes as the escape `\u0000`.
fn has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                // Skip the escaped character so that `\\u0000` (an escaped
                // backslash followed by text) is not taken for a NUL.
                i += 2;
            }
            0 => return true,
            _ => i += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nul_escapes_only() {
        assert!(has_nul(&serde_json::to_string("a\0b").unwrap_or_default()));
        assert!(!has_nul(
            &serde_json::to_string("a\\u0000b").unwrap_or_default()
        ));
        assert!(!has_nul(
            &serde_json::to_string("plain \u{1} text").unwrap_or_default()
        ));
        assert!(has_nul(r#"{"k":"\\\u0000"}"#));
    }
}
