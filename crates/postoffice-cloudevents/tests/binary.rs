//! Binary content mode: attribute names per binding, and parse-back into a
//! cloudevents `Event` with the SDK's builder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use postoffice_cloudevents::{
    APPLICATION_JSON, BinaryMode, ExtensionValue, JsonCloudEventsLayer, cloudevents,
};
use postoffice_core::EncodedMessage;
use serde_json::json;
use support::{ID, TIME, created_at, message};

fn layer(mode: BinaryMode) -> JsonCloudEventsLayer {
    JsonCloudEventsLayer::new("https://shop.example/orders", "com.example.order.created")
        .subject_fn(|headers| headers["order"].as_str().map(str::to_owned))
        .extension_from_header("tenant_id", "tenant")
        .unwrap()
        .extension_from_header("priority", "priority")
        .unwrap()
        .binary(mode)
}

/// What a consumer does with broker headers and body: strip the binding's
/// prefix and feed the SDK's builder.
fn rebuild(encoded: &EncodedMessage, prefix: &str) -> cloudevents::Event {
    let mut builder = EventBuilderV10::new();
    for (header, value) in &encoded.attributes {
        let name = header
            .strip_prefix(prefix)
            .expect("every attribute has the prefix");
        builder = match name {
            "specversion" => {
                assert_eq!(value, "1.0");
                builder
            }
            "id" => builder.id(value),
            "source" => builder.source(value.as_str()),
            "type" => builder.ty(value),
            "subject" => builder.subject(value),
            "time" => builder.time(value.as_str()),
            extension => builder.extension(extension, value.as_str()),
        };
    }
    let data: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
    builder
        .data(encoded.content_type.as_str(), data)
        .build()
        .unwrap()
}

fn names(encoded: &EncodedMessage) -> Vec<&str> {
    encoded
        .attributes
        .iter()
        .map(|(name, _)| name.as_str())
        .collect()
}

#[test]
fn kafka_uses_ce_headers_and_a_plain_json_body() {
    let headers = json!({ "order": "o-7", "tenant_id": "acme", "priority": 5 });
    let payload = json!({ "order_id": 7, "max": u64::MAX, "text": "Größe 東京" });
    let encoded = layer(BinaryMode::Kafka)
        .encode(&message(headers, payload.clone()))
        .unwrap();

    assert_eq!(encoded.content_type, APPLICATION_JSON);
    assert_eq!(
        encoded.body.as_ref(),
        serde_json::to_vec(&payload).unwrap().as_slice()
    );
    assert_eq!(
        names(&encoded),
        [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_subject",
            "ce_time",
            "ce_tenant",
            "ce_priority"
        ]
    );
    let value = |name: &str| {
        encoded
            .attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("ce_id"), Some("1234567890123456789"));
    assert_eq!(value("ce_time"), Some(TIME));
    assert_eq!(value("ce_priority"), Some("5"));

    let event = rebuild(&encoded, "ce_");
    assert_eq!(event.id(), ID.to_string());
    assert_eq!(event.source(), "https://shop.example/orders");
    assert_eq!(event.ty(), "com.example.order.created");
    assert_eq!(event.time(), Some(&created_at()));
    assert_eq!(event.subject(), Some("o-7"));
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(
        event.extension("tenant"),
        Some(&ExtensionValue::from("acme"))
    );
    assert_eq!(
        event.extension("priority"),
        Some(&ExtensionValue::from("5"))
    );
    assert_eq!(event.data(), Some(&Data::Json(payload)));
}

#[test]
fn amqp_uses_the_cloud_events_colon_prefix() {
    let headers = json!({ "tenant_id": "acme" });
    let payload = json!({ "id": 1_234_567_890_123_456_789_u64, "note": "naïve café" });
    let encoded = layer(BinaryMode::Amqp)
        .encode(&message(headers, payload.clone()))
        .unwrap();

    assert_eq!(encoded.content_type, APPLICATION_JSON);
    assert_eq!(
        names(&encoded),
        [
            "cloudEvents:specversion",
            "cloudEvents:id",
            "cloudEvents:source",
            "cloudEvents:type",
            "cloudEvents:time",
            "cloudEvents:tenant",
        ]
    );

    let event = rebuild(&encoded, "cloudEvents:");
    assert_eq!(event.id(), "1234567890123456789");
    assert_eq!(event.time(), Some(&created_at()));
    assert_eq!(event.subject(), None);
    assert_eq!(event.data(), Some(&Data::Json(payload)));
}

#[test]
fn binary_body_keeps_thirty_digit_numbers_exact() {
    let text = r#"{"n":123456789012345678901234567890,"s":"日本"}"#;
    let payload = serde_json::value::RawValue::from_string(text.to_owned()).unwrap();
    let encoded = layer(BinaryMode::Kafka)
        .encode(&message(json!({}), payload))
        .unwrap();
    assert_eq!(encoded.body.as_ref(), text.as_bytes());
}

#[test]
fn structured_switches_binary_mode_off() {
    let layer = layer(BinaryMode::Amqp);
    assert_eq!(layer.binary_mode(), Some(BinaryMode::Amqp));
    let layer = layer.structured();
    assert_eq!(layer.binary_mode(), None);
    let encoded = layer.encode(&message(json!({}), json!(1))).unwrap();
    assert!(encoded.attributes.is_empty());
    assert_eq!(
        encoded.content_type,
        postoffice_cloudevents::APPLICATION_CLOUDEVENTS_JSON
    );
}
