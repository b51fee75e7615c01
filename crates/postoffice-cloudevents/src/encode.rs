//! Turning one message into a CloudEvent, in either content mode.

use chrono::SecondsFormat;
use cloudevents::event::ExtensionValue;
use postoffice_core::{EncodedMessage, Message};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::layer::{BinaryMode, Config, ExtensionSource};
use crate::{APPLICATION_CLOUDEVENTS_JSON, APPLICATION_JSON, EncodeError, SPEC_VERSION};

/// An attribute value as written: the CloudEvents types a header can map to.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    String(String),
    Boolean(bool),
    Integer(i32),
}

impl Scalar {
    /// Maps a header value; `None` for null, an error for objects and arrays.
    fn from_json(name: &str, value: &Value) -> Result<Option<Self>, EncodeError> {
        let kind = match value {
            Value::Null => return Ok(None),
            Value::String(text) => return Ok(Some(Self::String(text.clone()))),
            Value::Bool(flag) => return Ok(Some(Self::Boolean(*flag))),
            Value::Number(number) => return Ok(Some(Self::from_number(number))),
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        Err(EncodeError::ExtensionValue {
            name: name.to_owned(),
            kind,
        })
    }

    /// A 32-bit whole number as an integer, anything else as its JSON text.
    fn from_number(number: &serde_json::Number) -> Self {
        match number.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(n) => Self::Integer(n),
            None => Self::String(number.to_string()),
        }
    }

    fn from_extension(value: ExtensionValue) -> Self {
        match value {
            ExtensionValue::String(text) => Self::String(text),
            ExtensionValue::Boolean(flag) => Self::Boolean(flag),
            ExtensionValue::Integer(n) => match i32::try_from(n) {
                Ok(n) => Self::Integer(n),
                Err(_) => Self::String(n.to_string()),
            },
        }
    }

    /// The canonical string form, for binary-mode headers.
    fn into_text(self) -> String {
        match self {
            Self::String(text) => text,
            Self::Boolean(flag) => flag.to_string(),
            Self::Integer(n) => n.to_string(),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::String(text) => serializer.serialize_str(text),
            Self::Boolean(flag) => serializer.serialize_bool(*flag),
            Self::Integer(n) => serializer.serialize_i32(*n),
        }
    }
}

/// The context attributes of one event, resolved from a message.
struct Attributes<'c> {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: String,
    extensions: Vec<(&'c str, Scalar)>,
}

impl<'c> Attributes<'c> {
    fn resolve<H, P>(
        config: &'c Config,
        message: &Message<H, P>,
        headers: &Value,
    ) -> Result<Self, EncodeError> {
        let source = non_empty(config.source.resolve(headers), "source")?;
        let ty = non_empty(config.ty.resolve(headers), "type")?;
        let subject = config.subject.as_ref().and_then(|subject| subject(headers));

        let mut extensions = Vec::with_capacity(config.extensions.len());
        for extension in &config.extensions {
            let name = extension.name.as_str();
            let value = match &extension.source {
                ExtensionSource::Header(field) => match headers.get(field) {
                    Some(value) => Scalar::from_json(name, value)?,
                    None => None,
                },
                ExtensionSource::Derived(derive) => derive(headers).map(Scalar::from_extension),
            };
            extensions.extend(value.map(|value| (name, value)));
        }

        Ok(Self {
            id: message.id.to_string(),
            source,
            ty,
            subject,
            time: message
                .created_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            extensions,
        })
    }

    /// `(name, value)` pairs in the order they are written, without
    /// `specversion` and `datacontenttype`.
    fn text_pairs(self) -> impl Iterator<Item = (&'c str, String)> {
        let fixed = [("id", self.id), ("source", self.source), ("type", self.ty)];
        let subject = self.subject.map(|subject| ("subject", subject));
        fixed
            .into_iter()
            .chain(subject)
            .chain([("time", self.time)])
            .chain(
                self.extensions
                    .into_iter()
                    .map(|(name, value)| (name, value.into_text())),
            )
    }
}

fn non_empty(value: String, attribute: &'static str) -> Result<String, EncodeError> {
    if value.is_empty() {
        Err(EncodeError::EmptyAttribute { attribute })
    } else {
        Ok(value)
    }
}

/// The JSON event format envelope, with the payload inlined as raw JSON text.
struct Envelope<'a> {
    attributes: &'a Attributes<'a>,
    data: &'a RawValue,
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = self.attributes;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", &attributes.id)?;
        map.serialize_entry("source", &attributes.source)?;
        map.serialize_entry("type", &attributes.ty)?;
        if let Some(subject) = &attributes.subject {
            map.serialize_entry("subject", subject)?;
        }
        map.serialize_entry("time", &attributes.time)?;
        map.serialize_entry("datacontenttype", APPLICATION_JSON)?;
        for (name, value) in &attributes.extensions {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("data", self.data)?;
        map.end()
    }
}

/// Encodes `message` as configured.
pub(crate) fn encode<H: Serialize, P: Serialize>(
    config: &Config,
    message: &Message<H, P>,
) -> Result<EncodedMessage, EncodeError> {
    let headers = serde_json::to_value(&message.headers).map_err(EncodeError::Headers)?;
    let attributes = Attributes::resolve(config, message, &headers)?;
    match config.binary {
        None => structured(message, headers, &attributes),
        Some(mode) => binary(message, headers, attributes, mode),
    }
}

fn structured<H, P: Serialize>(
    message: &Message<H, P>,
    headers: Value,
    attributes: &Attributes<'_>,
) -> Result<EncodedMessage, EncodeError> {
    // The payload is serialized once and copied into `data` as text, so the
    // digits of its numbers never pass through a JSON number type.
    let data = serde_json::value::to_raw_value(&message.payload).map_err(EncodeError::Payload)?;
    let envelope = Envelope {
        attributes,
        data: &data,
    };
    let body = serde_json::to_vec(&envelope).map_err(EncodeError::Envelope)?;
    Ok(EncodedMessage::new(
        message.meta(),
        headers,
        APPLICATION_CLOUDEVENTS_JSON,
        body,
    ))
}

fn binary<H, P: Serialize>(
    message: &Message<H, P>,
    headers: Value,
    attributes: Attributes<'_>,
    mode: BinaryMode,
) -> Result<EncodedMessage, EncodeError> {
    let body = serde_json::to_vec(&message.payload).map_err(EncodeError::Payload)?;
    let prefix = mode.prefix();
    let specversion = ("specversion", SPEC_VERSION.to_owned());
    let pairs = [specversion].into_iter().chain(attributes.text_pairs());

    let mut encoded = EncodedMessage::new(message.meta(), headers, APPLICATION_JSON, body);
    encoded.attributes = pairs
        .map(|(name, value)| (format!("{prefix}{name}"), value))
        .collect();
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_map_to_integers_only_within_32_bits() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text);
        let cases = [
            ("7", Scalar::Integer(7)),
            ("-2147483648", Scalar::Integer(i32::MIN)),
            ("2147483648", Scalar::String("2147483648".to_owned())),
            (
                "18446744073709551615",
                Scalar::String("18446744073709551615".to_owned()),
            ),
            ("1.5", Scalar::String("1.5".to_owned())),
        ];
        for (text, expected) in cases {
            let parsed = number(text).map(|n| Scalar::from_number(&n));
            assert_eq!(parsed.ok(), Some(expected), "{text}");
        }
        assert_eq!(
            Scalar::from_extension(ExtensionValue::Integer(i64::MAX)),
            Scalar::String(i64::MAX.to_string())
        );
    }

    #[test]
    fn objects_and_arrays_are_refused_with_the_attribute_name() {
        let error = Scalar::from_json("tags", &serde_json::json!(["a"]));
        assert!(matches!(
            error,
            Err(EncodeError::ExtensionValue { ref name, kind: "array" }) if name == "tags"
        ));
        assert!(matches!(Scalar::from_json("x", &Value::Null), Ok(None)));
    }
}
