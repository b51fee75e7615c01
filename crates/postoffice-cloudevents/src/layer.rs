use std::fmt;
use std::sync::Arc;

use cloudevents::event::ExtensionValue;
use postoffice_core::{EncodedMessage, Message};
use serde::Serialize;
use serde_json::Value;
use tower_layer::Layer;

use crate::{EncodeError, ExtensionNameError, JsonCloudEvents, encode, validate_extension_name};

/// A function from the message headers (as a JSON value) to an attribute.
type HeaderFn<T> = Arc<dyn Fn(&Value) -> T + Send + Sync>;

/// Where the `source` or `type` attribute comes from.
#[derive(Clone)]
pub(crate) enum Attribute {
    Fixed(String),
    Derived(HeaderFn<String>),
}

impl Attribute {
    pub(crate) fn resolve(&self, headers: &Value) -> String {
        match self {
            Self::Fixed(value) => value.clone(),
            Self::Derived(derive) => derive(headers),
        }
    }
}

/// Where the value of one extension attribute comes from.
#[derive(Clone)]
pub(crate) enum ExtensionSource {
    /// A top-level field of the headers object.
    Header(String),
    /// A user function of the headers.
    Derived(HeaderFn<Option<ExtensionValue>>),
}

/// One configured extension attribute.
#[derive(Clone)]
pub(crate) struct Extension {
    pub(crate) name: String,
    pub(crate) source: ExtensionSource,
}

/// The settings a [`JsonCloudEventsLayer`] holds and its services share.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) source: Attribute,
    pub(crate) ty: Attribute,
    pub(crate) subject: Option<HeaderFn<Option<String>>>,
    pub(crate) extensions: Vec<Extension>,
    pub(crate) binary: Option<BinaryMode>,
}

/// The protocol binding whose header names binary content mode uses.
///
/// In binary mode the body is the payload JSON alone, labelled
/// `application/json`, and each CloudEvents attribute travels as one entry of
/// [`EncodedMessage::attributes`], which the broker transports copy onto the
/// message headers as they are. The attribute value is always its canonical
/// string form (the `time` as RFC 3339 text, integers in decimal, booleans as
/// `true`/`false`).
///
/// `datacontenttype` is not among the attributes: both bindings carry it in
/// the message's own content type, which the transports take from
/// [`EncodedMessage::content_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryMode {
    /// The Kafka protocol binding: header names are the attribute names
    /// prefixed with `ce_` (`ce_id`, `ce_time`, `ce_tenant`), as its section
    /// 3.2.3 asks; the data content type belongs in the `content-type` header
    /// (section 3.2.1).
    Kafka,
    /// The AMQP protocol binding: application property names are the
    /// attribute names prefixed with `cloudEvents:` (`cloudEvents:id`), the
    /// spelling of its section 3.1.3.1. Values are sent in their canonical
    /// string form, which section 3.1.3.2 allows next to the native AMQP types;
    /// the data content type is the AMQP `content-type` property (3.1.1).
    Amqp,
}

impl BinaryMode {
    /// The prefix put before each attribute name.
    ///
    /// ```
    /// use postoffice_cloudevents::BinaryMode;
    ///
    /// assert_eq!(BinaryMode::Kafka.prefix(), "ce_");
    /// assert_eq!(BinaryMode::Amqp.prefix(), "cloudEvents:");
    /// ```
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Kafka => "ce_",
            Self::Amqp => "cloudEvents:",
        }
    }
}

/// Encodes outbox messages as CloudEvents 1.0 before they reach a transport.
///
/// By default each message becomes one event in the JSON event format
/// (structured content mode):
///
/// | attribute | value |
/// |---|---|
/// | `specversion` | `1.0` |
/// | `id` | the outbox message id, in decimal |
/// | `source`, `type` | fixed, or derived from the headers |
/// | `subject` | left out, or derived from the headers |
/// | `time` | the message's creation time, RFC 3339 in UTC (`2026-12-03T16:21:47.123456Z`) |
/// | `datacontenttype` | `application/json` |
/// | extensions | from header fields or functions, under validated names |
/// | `data` | the payload, as the JSON text its `Serialize` impl writes |
///
/// The body is labelled [`APPLICATION_CLOUDEVENTS_JSON`](crate::APPLICATION_CLOUDEVENTS_JSON).
/// [`binary`](Self::binary) switches to binary content mode for Kafka or AMQP.
///
/// Functions that derive attributes receive the headers serialized as a
/// [`serde_json::Value`], the same value the transport later sees as
/// [`EncodedMessage::headers`].
///
/// ```
/// use postoffice_cloudevents::JsonCloudEventsLayer;
/// use postoffice_core::{EncodedMessage, transport::InMemory};
/// use tower::ServiceBuilder;
///
/// let layer = JsonCloudEventsLayer::new("https://shop.example/orders", "com.example.order")
///     .type_fn(|headers| match headers["kind"].as_str() {
///         Some(kind) => format!("com.example.order.{kind}"),
///         None => "com.example.order".to_owned(),
///     })
///     .extension_from_header("tenant_id", "tenant")?;
///
/// let transport = ServiceBuilder::new()
///     .layer(layer)
///     .service(InMemory::<EncodedMessage>::default());
/// # let _ = transport;
/// # Ok::<(), postoffice_cloudevents::ExtensionNameError>(())
/// ```
#[derive(Clone)]
pub struct JsonCloudEventsLayer {
    config: Arc<Config>,
}

impl JsonCloudEventsLayer {
    /// A layer writing structured events with a fixed `source` and `type`.
    ///
    /// `source` should be a URI reference and `type` a reverse-DNS name such
    /// as `com.example.order.created`; neither may be empty (a message that
    /// would get an empty one fails with [`EncodeError::EmptyAttribute`]).
    pub fn new(source: impl Into<String>, ty: impl Into<String>) -> Self {
        let config = Config {
            source: Attribute::Fixed(source.into()),
            ty: Attribute::Fixed(ty.into()),
            subject: None,
            extensions: Vec::new(),
            binary: None,
        };
        Self {
            config: Arc::new(config),
        }
    }

    /// Derives `source` from each message's headers instead.
    pub fn source_fn(mut self, source: impl Fn(&Value) -> String + Send + Sync + 'static) -> Self {
        self.config_mut().source = Attribute::Derived(Arc::new(source));
        self
    }

    /// Derives `type` from each message's headers instead.
    pub fn type_fn(mut self, ty: impl Fn(&Value) -> String + Send + Sync + 'static) -> Self {
        self.config_mut().ty = Attribute::Derived(Arc::new(ty));
        self
    }

    /// Sets the optional `subject` attribute from each message's headers;
    /// `None` leaves it out of that event.
    pub fn subject_fn(
        mut self,
        subject: impl Fn(&Value) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().subject = Some(Arc::new(subject));
        self
    }

    /// Copies the top-level header field `header` into the extension
    /// attribute `name`.
    ///
    /// A string stays a string and a boolean a boolean. A whole number in the
    /// range of the CloudEvents Integer type (32 bits, signed) becomes an
    /// integer; any other number is sent as its JSON text in a string, so no
    /// digit is lost. A missing or `null` field leaves the attribute out of
    /// that event. An object or array fails the message with
    /// [`EncodeError::ExtensionValue`].
    ///
    /// # Errors
    ///
    /// [`ExtensionNameError`] when `name` is not a valid CloudEvents extension
    /// name (see [`validate_extension_name`]) or is already configured.
    pub fn extension_from_header(
        self,
        header: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, ExtensionNameError> {
        self.add_extension(name.into(), ExtensionSource::Header(header.into()))
    }

    /// Sets the extension attribute `name` from each message's headers with a
    /// function; `None` leaves it out of that event.
    ///
    /// An [`ExtensionValue::Integer`] outside the 32-bit range of the
    /// CloudEvents Integer type is sent as a decimal string.
    ///
    /// ```
    /// use postoffice_cloudevents::{ExtensionValue, JsonCloudEventsLayer};
    ///
    /// let layer = JsonCloudEventsLayer::new("/orders", "com.example.order")
    ///     .extension_fn("region", |headers| {
    ///         headers.pointer("/route/region")?.as_str().map(ExtensionValue::from)
    ///     })?;
    /// # let _ = layer;
    /// # Ok::<(), postoffice_cloudevents::ExtensionNameError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ExtensionNameError`] when `name` is not a valid CloudEvents extension
    /// name (see [`validate_extension_name`]) or is already configured.
    pub fn extension_fn(
        self,
        name: impl Into<String>,
        value: impl Fn(&Value) -> Option<ExtensionValue> + Send + Sync + 'static,
    ) -> Result<Self, ExtensionNameError> {
        self.add_extension(name.into(), ExtensionSource::Derived(Arc::new(value)))
    }

    /// Switches to binary content mode for the given protocol binding.
    pub fn binary(mut self, mode: BinaryMode) -> Self {
        self.config_mut().binary = Some(mode);
        self
    }

    /// Switches back to structured content mode, the default.
    pub fn structured(mut self) -> Self {
        self.config_mut().binary = None;
        self
    }

    /// The binary mode in use, or `None` for structured mode.
    pub fn binary_mode(&self) -> Option<BinaryMode> {
        self.config.binary
    }

    /// Encodes one message the way the layer's service does.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] when the headers or payload do not serialize, `source`
    /// or `type` come out empty, or an extension header holds an object or
    /// array.
    pub fn encode<H: Serialize, P: Serialize>(
        &self,
        message: &Message<H, P>,
    ) -> Result<EncodedMessage, EncodeError> {
        encode::encode(&self.config, message)
    }

    fn add_extension(
        mut self,
        name: String,
        source: ExtensionSource,
    ) -> Result<Self, ExtensionNameError> {
        validate_extension_name(&name)?;
        if self
            .config
            .extensions
            .iter()
            .any(|extension| extension.name == name)
        {
            return Err(ExtensionNameError::Duplicate { name });
        }
        self.config_mut()
            .extensions
            .push(Extension { name, source });
        Ok(self)
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }
}

impl fmt::Debug for JsonCloudEventsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extensions: Vec<&str> = self.extensions.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("JsonCloudEventsLayer")
            .field("source", &self.source)
            .field("type", &self.ty)
            .field("subject", &self.subject.as_ref().map(|_| "fn"))
            .field("extensions", &extensions)
            .field("binary", &self.binary)
            .finish()
    }
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(value) => value.fmt(f),
            Self::Derived(_) => f.write_str("fn"),
        }
    }
}

impl<S> Layer<S> for JsonCloudEventsLayer {
    type Service = JsonCloudEvents<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JsonCloudEvents::from_config(inner, Arc::clone(&self.config))
    }
}
