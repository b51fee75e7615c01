//! Where a message goes and which AMQP properties it carries.

use std::fmt;
use std::sync::Arc;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use postoffice_core::EncodedMessage;

use crate::Error;

/// The header field the default mapping reads the routing key from.
pub const DEFAULT_ROUTING_KEY_HEADER: &str = "routing_key";

/// AMQP delivery mode 2: the broker writes the message to disk in durable
/// queues.
const PERSISTENT: u8 = 2;

/// The exchange and routing key of one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Exchange name; `""` is the default exchange, which routes to the queue
    /// named by the routing key.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

impl Route {
    /// A route to `exchange` with `routing_key`.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }
}

pub(crate) type RouteFn = Arc<dyn Fn(&EncodedMessage) -> Route + Send + Sync>;
pub(crate) type PropertiesFn =
    Arc<dyn Fn(&EncodedMessage, BasicProperties) -> BasicProperties + Send + Sync>;

/// How messages map to AMQP: the route and the properties.
#[derive(Clone)]
pub(crate) struct Mapping {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) routing_key_header: Option<String>,
    pub(crate) route: Option<RouteFn>,
    pub(crate) properties: Option<PropertiesFn>,
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            exchange: String::new(),
            routing_key: String::new(),
            routing_key_header: Some(DEFAULT_ROUTING_KEY_HEADER.to_owned()),
            route: None,
            properties: None,
        }
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("routing_key_header", &self.routing_key_header)
            .field("custom_route", &self.route.is_some())
            .field("custom_properties", &self.properties.is_some())
            .finish()
    }
}

/// A message ready for `basic.publish`.
pub(crate) struct Mapped {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
}

impl Mapping {
    pub(crate) fn route(&self, message: &EncodedMessage) -> Route {
        if let Some(route) = &self.route {
            return route(message);
        }
        let from_header = self
            .routing_key_header
            .as_deref()
            .and_then(|field| message.headers.get(field))
            .and_then(serde_json::Value::as_str);
        let routing_key = from_header.unwrap_or(&self.routing_key);
        Route::new(self.exchange.clone(), routing_key)
    }

    pub(crate) fn map(&self, message: &EncodedMessage) -> Result<Mapped, Error> {
        let id = message.id();
        let invalid = |field| move |_| Error::InvalidProperty { id, field };
        let route = self.route(message);
        let exchange = ShortString::try_new(route.exchange).map_err(invalid("exchange"))?;
        let routing_key =
            ShortString::try_new(route.routing_key).map_err(invalid("routing key"))?;
        let content_type =
            ShortString::try_new(message.content_type.as_str()).map_err(invalid("content type"))?;

        let mut headers = FieldTable::default();
        let scalars = message
            .scalar_headers()
            .map(|(name, value)| (name.to_owned(), value));
        for (name, value) in scalars.chain(message.attributes.iter().cloned()) {
            let name = ShortString::try_new(name).map_err(invalid("header name"))?;
            headers.insert(name, AMQPValue::LongString(LongString::from(value)));
        }

        let message_id = ShortString::try_new(id.to_string()).map_err(invalid("message id"))?;
        let timestamp = u64::try_from(message.meta.created_at.timestamp()).unwrap_or(0);
        let properties = BasicProperties::default()
            .with_message_id(message_id.clone())
            .with_content_type(content_type)
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(timestamp)
            .with_headers(headers);
        let properties = match &self.properties {
            // The message id is kept: returned messages are matched by it.
            Some(customize) => customize(message, properties).with_message_id(message_id),
            None => properties,
        };
        Ok(Mapped {
            exchange,
            routing_key,
            properties,
        })
    }
}

/// Frame header (type, channel, size: 7 bytes), class id, weight and body
/// size (12 bytes) and the frame end octet around a content header's
/// properties.
const HEADER_FRAME_OVERHEAD: usize = 20;

/// The size of the content header frame that carries `properties`, which must
/// fit in one frame of the connection's negotiated `frame_max`.
pub(crate) fn header_frame_size(properties: &BasicProperties) -> usize {
    match lapin::protocol::basic::gen_properties(properties)(Vec::new().into()) {
        Ok(written) => usize::try_from(written.position)
            .unwrap_or(usize::MAX)
            .saturating_add(HEADER_FRAME_OVERHEAD),
        // Properties that do not even serialize cannot be published either.
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_frame_size_counts_every_property() {
        let empty = header_frame_size(&BasicProperties::default());
        assert_eq!(empty, HEADER_FRAME_OVERHEAD + 2, "only the property flags");
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("big"),
            AMQPValue::LongString(LongString::from("v".repeat(1000))),
        );
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from("12"))
            .with_headers(headers);
        // flags, message id (1 + 2), table length (4), name (1 + 3), type
        // (1), value (4 + 1000)
        assert_eq!(
            header_frame_size(&properties),
            HEADER_FRAME_OVERHEAD + 2 + 3 + 4 + 4 + 1 + 1004
        );
    }
}
