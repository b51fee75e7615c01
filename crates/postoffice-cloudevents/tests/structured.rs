//! Structured content mode: events parse with the cloudevents SDK and keep
//! their attributes and payload exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cloudevents::event::SpecVersion;
use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use postoffice_cloudevents::{
    APPLICATION_CLOUDEVENTS_JSON, EncodeError, ExtensionNameError, ExtensionValue,
    JsonCloudEventsLayer, cloudevents,
};
use postoffice_core::transport::InMemory;
use postoffice_core::{EncodedMessage, is_permanent};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use support::{ID, TIME, created_at, message};
use tower::ServiceExt;

/// Reads an event back the way a consumer using the SDK does.
fn parse(encoded: &EncodedMessage) -> cloudevents::Event {
    serde_json::from_slice(&encoded.body).expect("the body parses as a cloudevents event")
}

/// The `data` member of a structured body as raw JSON text, untouched by any
/// number type.
fn raw_data(encoded: &EncodedMessage) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        data: Box<RawValue>,
    }
    let envelope: Envelope = serde_json::from_slice(&encoded.body).unwrap();
    envelope.data.get().to_owned()
}

fn layer() -> JsonCloudEventsLayer {
    JsonCloudEventsLayer::new("https://shop.example/orders", "com.example.order.created")
}

#[test]
fn round_trips_id_source_type_time_and_data() {
    let payload = json!({ "order_id": 7, "lines": [{ "sku": "A-1", "qty": 2 }] });
    let encoded = layer()
        .encode(&message(json!({ "kind": "created" }), payload.clone()))
        .unwrap();

    assert_eq!(encoded.content_type, APPLICATION_CLOUDEVENTS_JSON);
    assert!(encoded.attributes.is_empty());
    assert_eq!(encoded.headers, json!({ "kind": "created" }));
    assert_eq!(encoded.id().get(), ID);

    let event = parse(&encoded);
    let expected = EventBuilderV10::new()
        .id(ID.to_string())
        .source("https://shop.example/orders")
        .ty("com.example.order.created")
        .time(created_at())
        .data("application/json", payload)
        .build()
        .unwrap();
    assert_eq!(event, expected);
    assert_eq!(event.specversion(), SpecVersion::V10);
    assert_eq!(event.id(), "1234567890123456789");
    assert_eq!(event.time(), Some(&created_at()));
}

#[test]
fn time_is_rfc3339_with_the_utc_offset_and_all_fraction_digits() {
    let encoded = layer().encode(&message(json!({}), json!(null))).unwrap();
    let body: Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(body["time"], TIME);
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["id"], "1234567890123456789");

    let mut nanos = message(json!({}), json!(null));
    nanos.created_at = "2026-12-03T16:21:47.000000001Z".parse().unwrap();
    let event = parse(&layer().encode(&nanos).unwrap());
    assert_eq!(event.time(), Some(&nanos.created_at));
}

#[test]
fn big_integers_and_non_ascii_text_stay_exact_in_a_json_value_payload() {
    let text = "Grüße aus Köln, 東京, naïve café 🚀 — \"quoted\" \\ tab\t";
    let payload = json!({
        "max": u64::MAX,
        "min": i64::MIN,
        "id": 1_234_567_890_123_456_789_u64,
        "thirty_digits_as_text": "123456789012345678901234567890",
        "text": text,
    });
    let encoded = layer()
        .encode(&message(json!({}), payload.clone()))
        .unwrap();

    // The data member is the payload's own JSON text, byte for byte.
    let raw = raw_data(&encoded);
    assert_eq!(raw, serde_json::to_string(&payload).unwrap());
    assert!(raw.contains("\"max\":18446744073709551615"));
    assert!(raw.contains("\"min\":-9223372036854775808"));
    assert!(raw.contains("\"id\":1234567890123456789"));
    assert!(
        raw.contains("Grüße aus Köln, 東京, naïve café 🚀"),
        "non-ascii is not escaped"
    );

    // The SDK hands back the same value.
    let event = parse(&encoded);
    let Some(Data::Json(data)) = event.data() else {
        panic!("json data expected")
    };
    assert_eq!(data, &payload);
    assert_eq!(data["max"].as_u64(), Some(u64::MAX));
    assert_eq!(data["min"].as_i64(), Some(i64::MIN));
    assert_eq!(data["id"].as_u64(), Some(1_234_567_890_123_456_789));
    assert_eq!(
        data["thirty_digits_as_text"],
        "123456789012345678901234567890"
    );
    assert_eq!(
        data["text"].as_str().map(str::as_bytes),
        Some(text.as_bytes())
    );
}

#[test]
fn a_thirty_digit_number_stays_exact_in_a_raw_payload() {
    let text = r#"{"n":123456789012345678901234567890,"neg":-987654321098765432109876543210,"d":0.1000000000000000000000000001,"s":"ü"}"#;
    let payload: Box<RawValue> = RawValue::from_string(text.to_owned()).unwrap();
    let encoded = layer().encode(&message(json!({}), payload)).unwrap();

    assert_eq!(raw_data(&encoded), text);

    // The SDK accepts the event and keeps every attribute; it reads `data`
    // through serde_json::Value, so this number's digits are only kept by
    // readers with serde_json's `arbitrary_precision` feature.
    let event = parse(&encoded);
    assert_eq!(event.id(), ID.to_string());
    assert_eq!(event.time(), Some(&created_at()));
    let Some(Data::Json(data)) = event.data() else {
        panic!("json data expected")
    };
    assert_eq!(data["s"], "ü");
    assert!(data["n"].is_number());
}

#[test]
fn user_structs_keep_wide_and_string_wrapped_numbers_exact() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Payment {
        amount_text: String,
        wide: u128,
        note: String,
    }
    let payment = Payment {
        amount_text: "123456789012345678901234567890".to_owned(),
        wide: 123_456_789_012_345_678_901_234_567_890,
        note: "Überweisung für Zoë".to_owned(),
    };
    let encoded = layer().encode(&message(json!({}), &payment)).unwrap();

    let raw = raw_data(&encoded);
    assert!(raw.contains("\"wide\":123456789012345678901234567890"));
    assert_eq!(serde_json::from_str::<Payment>(&raw).unwrap(), payment);

    let event = parse(&encoded);
    let Some(Data::Json(data)) = event.data() else {
        panic!("json data expected")
    };
    assert_eq!(data["amount_text"], "123456789012345678901234567890");
    assert_eq!(data["note"], "Überweisung für Zoë");
}

#[test]
fn source_type_and_subject_come_from_the_headers() {
    let layer = JsonCloudEventsLayer::new("unused", "unused")
        .source_fn(|headers| format!("/tenants/{}", headers["tenant"].as_str().unwrap_or("none")))
        .type_fn(|headers| format!("com.example.{}", headers["kind"].as_str().unwrap_or("any")))
        .subject_fn(|headers| headers["order"].as_u64().map(|order| order.to_string()));
    let headers = json!({ "tenant": "acme", "kind": "order.paid", "order": 77 });
    let event = parse(&layer.encode(&message(headers, json!({}))).unwrap());
    assert_eq!(event.source(), "/tenants/acme");
    assert_eq!(event.ty(), "com.example.order.paid");
    assert_eq!(event.subject(), Some("77"));

    let event = parse(
        &layer
            .encode(&message(json!({ "kind": "x" }), json!({})))
            .unwrap(),
    );
    assert_eq!(event.subject(), None);
}

#[test]
fn extensions_from_headers_carry_typed_values_under_their_names() {
    let layer = layer()
        .extension_from_header("tenant_id", "tenant")
        .unwrap()
        .extension_from_header("priority", "priority")
        .unwrap()
        .extension_from_header("urgent", "urgent")
        .unwrap()
        .extension_from_header("order_id", "orderid")
        .unwrap()
        .extension_from_header("missing", "missing")
        .unwrap()
        .extension_from_header("nothing", "nothing")
        .unwrap()
        .extension_fn("region", |headers| {
            headers
                .pointer("/route/region")?
                .as_str()
                .map(ExtensionValue::from)
        })
        .unwrap();
    let headers = json!({
        "tenant_id": "acme",
        "priority": 5,
        "urgent": true,
        "order_id": 1_234_567_890_123_456_789_u64,
        "nothing": null,
        "route": { "region": "eu-west" },
    });
    let event = parse(&layer.encode(&message(headers, json!({}))).unwrap());

    assert_eq!(
        event.extension("tenant"),
        Some(&ExtensionValue::from("acme"))
    );
    assert_eq!(
        event.extension("priority"),
        Some(&ExtensionValue::Integer(5))
    );
    assert_eq!(
        event.extension("urgent"),
        Some(&ExtensionValue::Boolean(true))
    );
    // Beyond the 32-bit CloudEvents Integer: sent as text, every digit kept.
    assert_eq!(
        event.extension("orderid"),
        Some(&ExtensionValue::from("1234567890123456789"))
    );
    assert_eq!(
        event.extension("region"),
        Some(&ExtensionValue::from("eu-west"))
    );
    assert_eq!(event.extension("missing"), None);
    assert_eq!(event.extension("nothing"), None);
    assert_eq!(event.iter_extensions().count(), 5);
}

#[test]
fn invalid_extension_names_are_refused_when_configuring() {
    let refused = |name: &str| layer().extension_from_header("h", name).unwrap_err();
    assert_eq!(
        refused("tenant_id"),
        ExtensionNameError::InvalidCharacter {
            name: "tenant_id".into(),
            character: '_'
        }
    );
    assert_eq!(
        refused("Tenant"),
        ExtensionNameError::InvalidCharacter {
            name: "Tenant".into(),
            character: 'T'
        }
    );
    assert_eq!(refused(""), ExtensionNameError::Empty);
    assert_eq!(
        refused("time"),
        ExtensionNameError::Reserved {
            name: "time".into()
        }
    );
    assert_eq!(
        refused("data"),
        ExtensionNameError::Reserved {
            name: "data".into()
        }
    );
    assert_eq!(
        refused("averyveryverylongname1"),
        ExtensionNameError::TooLong {
            name: "averyveryverylongname1".into(),
            len: 22
        }
    );
    assert!(refused("tenant_id").to_string().contains("\"tenant_id\""));

    let error = layer()
        .extension_fn("Region", |_| None)
        .expect_err("uppercase is not allowed");
    assert!(matches!(
        error,
        ExtensionNameError::InvalidCharacter { character: 'R', .. }
    ));

    let twice = layer()
        .extension_from_header("a", "tenant")
        .unwrap()
        .extension_from_header("b", "tenant");
    assert_eq!(
        twice.unwrap_err(),
        ExtensionNameError::Duplicate {
            name: "tenant".into()
        }
    );
}

#[test]
fn bad_messages_fail_with_a_named_encode_error() {
    let layer = layer().extension_from_header("tags", "tags").unwrap();
    let error = layer
        .encode(&message(json!({ "tags": ["a", "b"] }), json!({})))
        .unwrap_err();
    assert!(
        matches!(error, EncodeError::ExtensionValue { ref name, kind: "array" } if name == "tags")
    );

    let empty = JsonCloudEventsLayer::new("", "t").encode(&message(json!({}), json!({})));
    assert!(matches!(
        empty,
        Err(EncodeError::EmptyAttribute {
            attribute: "source"
        })
    ));
    let empty = JsonCloudEventsLayer::new("/s", "t").type_fn(|_| String::new());
    let error = empty.encode(&message(json!({}), json!({}))).unwrap_err();
    assert_eq!(error.to_string(), "the cloudevents type attribute is empty");
}

#[tokio::test]
async fn the_service_hands_events_to_the_inner_transport() {
    let received = InMemory::<EncodedMessage>::default();
    let service = tower::ServiceBuilder::new()
        .layer(layer())
        .service(received.clone());

    service
        .oneshot(message(
            json!({ "kind": "created" }),
            json!({ "n": u64::MAX }),
        ))
        .await
        .unwrap();

    let sent = received.take();
    assert_eq!(sent.len(), 1);
    let event = parse(&sent[0]);
    assert_eq!(event.id(), ID.to_string());
    assert_eq!(event.data(), Some(&Data::Json(json!({ "n": u64::MAX }))));
}

#[tokio::test]
async fn an_unencodable_message_is_a_permanent_failure_and_is_not_sent() {
    let received = InMemory::<EncodedMessage>::default();
    let layer = layer().extension_from_header("meta", "meta").unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(received.clone());

    let error = service
        .oneshot(message(json!({ "meta": { "nested": 1 } }), json!({})))
        .await
        .unwrap_err();

    assert!(is_permanent(error.as_ref()));
    assert!(received.is_empty());
}
