use tower_layer::Layer;

use super::{APPLICATION_JSON, Json};

/// Applies [`Json`] encoding to a transport.
///
/// ```
/// use postoffice_core::{EncodedMessage, JsonLayer, transport::InMemory};
/// use tower::ServiceBuilder;
///
/// let transport = ServiceBuilder::new()
///     .layer(JsonLayer::new().content_type("application/vnd.shop+json"))
///     .service(InMemory::<EncodedMessage>::default());
/// # let _ = transport;
/// ```
#[derive(Debug, Clone)]
pub struct JsonLayer {
    content_type: String,
}

impl Default for JsonLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonLayer {
    /// A layer that labels bodies `application/json`.
    pub fn new() -> Self {
        Self {
            content_type: APPLICATION_JSON.to_owned(),
        }
    }

    /// Labels bodies with another JSON MIME type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }
}

impl<S> Layer<S> for JsonLayer {
    type Service = Json<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut json = Json::new(inner);
        json.content_type.clone_from(&self.content_type);
        json
    }
}
