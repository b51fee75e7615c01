//! The layer in the relay: publish through the in-memory outbox, relay with
//! the producer, read the event the transport received. Broker round trips
//! follow the same shape with a real transport behind the layer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cloudevents::{AttributesReader, Data};
use postoffice_cloudevents::{BinaryMode, JsonCloudEventsLayer, cloudevents};
use postoffice_core::memory::InMemoryOutbox;
use postoffice_core::transport::InMemory;
use postoffice_core::{
    CancellationToken, EncodedMessage, Outbox, PartitionKey, Producer, Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tower::ServiceBuilder;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Headers {
    order: String,
    kind: String,
}

impl PartitionKey for Headers {
    fn partition_key(&self) -> Vec<u8> {
        self.order.clone().into_bytes()
    }
}

const PAYLOAD: &str =
    r#"{"n":123456789012345678901234567890,"max":18446744073709551615,"text":"Grüße 東京 🚀"}"#;

async fn relay_one(layer: JsonCloudEventsLayer) -> EncodedMessage {
    let store = InMemoryOutbox::default();
    let outbox = Outbox::new(store.clone());
    let headers = Headers {
        order: "o-7".into(),
        kind: "created".into(),
    };
    let payload = RawValue::from_string(PAYLOAD.to_owned()).unwrap();
    let mut tx = store.begin();
    outbox
        .publish_messages([(headers, payload)], &mut tx)
        .await
        .unwrap();
    tx.commit();

    let received = InMemory::<EncodedMessage>::default();
    let transport = Transport::new(ServiceBuilder::new().layer(layer).service(received.clone()));
    let producer = Producer::new(store.poller::<Headers, Box<RawValue>>(), transport);
    let token = CancellationToken::new();
    let relay = tokio::spawn(producer.run(token.clone()));

    let mut got = received.wait_for(1, Duration::from_secs(30)).await.unwrap();
    token.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(store.pending(), 0);
    got.remove(0)
}

fn layer() -> JsonCloudEventsLayer {
    JsonCloudEventsLayer::new("/shop/orders", "unused").type_fn(|headers| {
        format!(
            "com.example.order.{}",
            headers["kind"].as_str().unwrap_or("")
        )
    })
}

#[tokio::test]
async fn structured_events_keep_the_stored_payload_text() {
    let encoded = relay_one(layer()).await;

    #[derive(Deserialize)]
    struct Envelope {
        data: Box<RawValue>,
    }
    let envelope: Envelope = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(envelope.data.get(), PAYLOAD);

    let event: cloudevents::Event = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(event.id(), encoded.id().to_string());
    assert_eq!(event.ty(), "com.example.order.created");
    assert_eq!(event.time(), Some(&encoded.meta.created_at));
    let Some(Data::Json(data)) = event.data() else {
        panic!("json data expected")
    };
    assert_eq!(data["max"].as_u64(), Some(u64::MAX));
    assert_eq!(data["text"], "Grüße 東京 🚀");
}

#[tokio::test]
async fn binary_events_carry_the_stored_payload_text_as_body() {
    let encoded = relay_one(layer().binary(BinaryMode::Kafka)).await;
    assert_eq!(encoded.body.as_ref(), PAYLOAD.as_bytes());
    let id = encoded
        .attributes
        .iter()
        .find(|(name, _)| name == "ce_id")
        .map(|(_, v)| v.clone());
    assert_eq!(id, Some(encoded.id().to_string()));
}
