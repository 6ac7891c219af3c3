//! Rust client of the fjord gateway (`fjord.gateway.v1`, see `proto/fjord/gateway/v1/`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), fjord_gateway_client::ClientError> {
//! use fjord_gateway_client::{GatewayClient, Message};
//! let mut client = GatewayClient::connect("http://127.0.0.1:9095").await?;
//! let landed = client.publish("orders", Message::new("hello").with_key("k1")).await?;
//! println!("stored in {} at {}/{}", landed.cluster, landed.partition, landed.offset);
//! let results = client
//!     .produce_batch("orders", vec![Message::new("a"), Message::new("b")])
//!     .await?;
//! for r in results {
//!     if let Err(failure) = r {
//!         eprintln!("retry later: {failure}");
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Errors come in two tiers: [`ClientError`] for a call that failed as a whole (the gRPC status,
//! with [`ClientError::is_retriable`]), and [`MessageFailure`] for one message of a batch that
//! the gateway could not store (the others may have been stored).

use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Messages and the client generated from `fjord/gateway/v1/gateway.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("fjord.gateway.v1");
}

pub use pb::ErrorCode;

/// Environment variable with the gateway's address, used by [`GatewayClient::from_env`].
pub const ADDRESS_ENV: &str = "FJORD_GATEWAY_ADDRESS";
/// The address used when [`ADDRESS_ENV`] is not set.
pub const DEFAULT_ADDRESS: &str = "http://localhost:9095";

/// A message to produce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Header values may be null (`None`).
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: Option<i64>,
    pub partition: Option<i32>,
}

impl Message {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: value.into(),
            ..Self::default()
        }
    }
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
    pub fn with_timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    fn into_pb(self) -> pb::Message {
        pb::Message {
            key: self.key.map(|k| k.to_vec()),
            value: self.value.to_vec(),
            headers: self
                .headers
                .into_iter()
                .map(|(key, value)| pb::Header {
                    key,
                    value: value.map(|v| v.to_vec()),
                })
                .collect(),
            timestamp_ms: self.timestamp_ms,
            partition: self.partition,
        }
    }
}

/// Where a message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub cluster: String,
    pub partition: i32,
    pub offset: i64,
    pub attempts: u32,
    /// The `fjord-hlc` header value.
    pub hlc: u64,
}

/// Why the gateway did not store one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct MessageFailure {
    pub code: ErrorCode,
    pub message: String,
    /// Whether sending it again may succeed.
    pub retriable: bool,
    pub clusters_tried: Vec<String>,
}

impl MessageFailure {
    /// Whether a cluster tried may have stored the message anyway (codes `Timeout` and
    /// `OutcomeUnknown`): sending it again may store it twice. For every other code it was not
    /// stored.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.code, ErrorCode::Timeout | ErrorCode::OutcomeUnknown)
    }
}

/// A call that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid gateway address {address:?}: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to the gateway: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The gateway refused the request (or the transport failed).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The only message of a [`GatewayClient::publish`] call was not stored.
    #[error("message not stored: {0}")]
    Message(#[from] MessageFailure),
    #[error("the gateway answered {got} results for {sent} messages")]
    Protocol { sent: usize, got: usize },
    /// The bearer token cannot be sent as gRPC metadata (not visible ASCII).
    #[error("the bearer token is not visible ASCII")]
    Token,
}

impl ClientError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Status(s) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Unknown
            ),
            Self::Message(f) => f.retriable,
            Self::Address { .. } | Self::Protocol { .. } | Self::Token => false,
        }
    }
}

/// A connection to a gateway. Cheap to clone (clones share the HTTP/2 connection).
#[derive(Debug, Clone)]
pub struct GatewayClient {
    inner: pb::gateway_client::GatewayClient<Channel>,
    timeout: Option<Duration>,
    /// `authorization` metadata sent with each call.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl GatewayClient {
    /// Connects to `address` (`http://host:port`).
    pub async fn connect(address: impl Into<String>) -> Result<Self, ClientError> {
        let address = address.into();
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|source| ClientError::Address { address, source })?
            .tcp_nodelay(true);
        let channel = endpoint.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// Connects to `$FJORD_GATEWAY_ADDRESS`, or [`DEFAULT_ADDRESS`].
    pub async fn from_env() -> Result<Self, ClientError> {
        let address = std::env::var(ADDRESS_ENV).unwrap_or_else(|_| DEFAULT_ADDRESS.to_owned());
        let address = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        Self::connect(address).await
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: pb::gateway_client::GatewayClient::new(channel),
            timeout: None,
            authorization: None,
        }
    }

    /// Sends `authorization: Bearer <token>` with each call (a gateway with `[auth]` requires
    /// it; use a TLS channel, the token is a secret). Replace it with a fresh one before it
    /// expires.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {}", token.trim())
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .map_err(|_| ClientError::Token)?;
        self.authorization = Some(value);
        Ok(self)
    }

    /// A deadline for each call (sent as `grpc-timeout`; the gateway stops retrying by then).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Produces a batch to `topic`; one result per message, in order.
    pub async fn produce_batch(
        &mut self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<Delivered, MessageFailure>>, ClientError> {
        let sent = messages.len();
        let mut request = tonic::Request::new(pb::ProduceBatchRequest {
            topic: topic.to_owned(),
            messages: messages.into_iter().map(Message::into_pb).collect(),
        });
        if let Some(t) = self.timeout {
            request.set_timeout(t);
        }
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let response = self.inner.produce_batch(request).await?.into_inner();
        if response.results.len() != sent {
            return Err(ClientError::Protocol {
                sent,
                got: response.results.len(),
            });
        }
        Ok(response.results.into_iter().map(from_pb).collect())
    }

    /// Produces one message; fails if it was not stored.
    pub async fn publish(
        &mut self,
        topic: &str,
        message: Message,
    ) -> Result<Delivered, ClientError> {
        let mut results = self.produce_batch(topic, vec![message]).await?;
        match results.pop() {
            Some(r) => Ok(r?),
            None => Err(ClientError::Protocol { sent: 1, got: 0 }),
        }
    }

    /// The generated client, for the streaming call and anything else not wrapped here.
    pub fn raw(&mut self) -> &mut pb::gateway_client::GatewayClient<Channel> {
        &mut self.inner
    }
}

/// A wire result as a Rust `Result`.
pub fn from_pb(result: pb::MessageResult) -> Result<Delivered, MessageFailure> {
    match result.outcome {
        Some(pb::message_result::Outcome::Delivered(d)) => Ok(Delivered {
            cluster: d.cluster,
            partition: d.partition,
            offset: d.offset,
            attempts: d.attempts,
            hlc: d.hlc,
        }),
        Some(pb::message_result::Outcome::Failure(f)) => Err(MessageFailure {
            code: ErrorCode::try_from(f.code).unwrap_or(ErrorCode::Unspecified),
            message: f.message,
            retriable: f.retriable,
            clusters_tried: f.clusters_tried,
        }),
        None => Err(MessageFailure {
            code: ErrorCode::Unspecified,
            message: "the gateway sent an empty result".into(),
            retriable: false,
            clusters_tried: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_builder_maps_to_the_wire() {
        let m = Message::new("v")
            .with_key("k")
            .with_header("h", None)
            .with_partition(3)
            .with_timestamp_ms(7)
            .into_pb();
        assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(m.value, b"v");
        assert_eq!(m.headers[0].value, None);
        assert_eq!((m.partition, m.timestamp_ms), (Some(3), Some(7)));
    }

    #[test]
    fn results_and_retriability() {
        let failure = pb::MessageResult {
            outcome: Some(pb::message_result::Outcome::Failure(pb::Failure {
                code: ErrorCode::Timeout as i32,
                message: "slow".into(),
                retriable: true,
                clusters_tried: vec!["a".into()],
            })),
        };
        let f = from_pb(failure).unwrap_err();
        assert_eq!(f.code, ErrorCode::Timeout);
        assert!(f.outcome_unknown());
        assert!(ClientError::Message(f).is_retriable());
        let rejected = MessageFailure {
            code: ErrorCode::Rejected,
            message: String::new(),
            retriable: false,
            clusters_tried: vec![],
        };
        assert!(!rejected.outcome_unknown());
        assert!(!ClientError::Status(tonic::Status::invalid_argument("x")).is_retriable());
        assert!(ClientError::Status(tonic::Status::resource_exhausted("x")).is_retriable());
        assert!(from_pb(pb::MessageResult { outcome: None }).is_err());
    }

    #[tokio::test]
    async fn bad_address_is_an_error() {
        let err = GatewayClient::connect("not a uri").await.unwrap_err();
        assert!(matches!(err, ClientError::Address { .. }), "{err}");
    }
}
