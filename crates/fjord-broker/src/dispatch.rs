//! Request routing: decode the header and body, run the handler, encode the response.
//!
//! [`start`] does everything that must happen in request order before it returns (for Produce,
//! queueing the batches in the write buffer), and hands back a future for the rest. The
//! connection answers those futures in the order the requests arrived, as Kafka requires.
//!
//! Produce and Fetch responses are metered against client byte-rate quotas here, once their
//! bytes are known, every request's handler time against its request quota, and responses are
//! held back for their throttle time (see [`crate::quotas`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable};

use fjord_coordinator::quotas::QuotaKey;

use crate::handlers;
use crate::memory::Reservation;
use crate::quotas::request_time::{self, PollTimed, RequestMeter, ThrottleTime};
use crate::session::Session;
use crate::versions;
use crate::Broker;

/// A response still being computed: `Ok(None)` means "send nothing" (acks=0 produce); an
/// error means the response could not be encoded and the connection must be closed.
pub type Reply = Pin<Box<dyn Future<Output = Result<Option<Bytes>, EncodeError>> + Send>>;

/// A response that could not be encoded (a bug: a field the version cannot carry).
#[derive(Debug, thiserror::Error)]
#[error("failed to encode a {key:?} v{version} response: {reason}")]
pub struct EncodeError {
    key: ApiKey,
    version: i16,
    reason: String,
}

/// A request the connection cannot answer; it is closed, as Kafka does.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is too short for a request header.
    #[error("request of {0} bytes is too short for a header")]
    TooShort(usize),
    /// No such API.
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    /// An API this broker does not serve, or a version it does not serve.
    #[error("unsupported {key:?} version {version}")]
    UnsupportedVersion {
        /// The API.
        key: ApiKey,
        /// The version asked for.
        version: i16,
    },
    /// The bytes do not decode as the request they claim to be.
    #[error("malformed {key:?} v{version} request: {reason}")]
    Malformed {
        /// The API.
        key: ApiKey,
        /// The version.
        version: i16,
        /// The decoder's complaint.
        reason: String,
    },
}

/// What a connection needs to know about a request it started.
pub struct Started {
    /// API key, for logs and metrics.
    pub key: ApiKey,
    /// The response to send.
    pub reply: Reply,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client id from the request header.
    pub client_id: String,
    /// The connection's listener, peer and principal.
    pub session: Arc<Session>,
}

impl Client {
    /// The client host as Kafka reports it ("/1.2.3.4").
    pub fn host(&self) -> String {
        self.session
            .peer
            .map(|p| format!("/{}", p.ip()))
            .unwrap_or_default()
    }

    /// The name of the listener the request arrived on.
    pub fn listener(&self) -> &str {
        &self.session.listener
    }
}

/// Decodes one request frame (without its 4-byte length prefix) and starts handling it.
pub async fn start(broker: &Arc<Broker>, frame: Bytes) -> Result<Started, ProtocolError> {
    start_from(broker, frame, &Arc::new(Session::plaintext(None))).await
}

/// [`start`] for a request that arrived on a connection with `session`.
pub async fn start_from(
    broker: &Arc<Broker>,
    mut frame: Bytes,
    session: &Arc<Session>,
) -> Result<Started, ProtocolError> {
    if frame.len() < 8 {
        return Err(ProtocolError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| ProtocolError::UnknownApi(raw_key))?;
    if key == ApiKey::ApiVersions && !versions::supports(key, version) {
        // KIP-511: answer a version from the future with v0 and UNSUPPORTED_VERSION so the client
        // can retry lower. Its header may have a layout this broker does not know, so only the
        // correlation id, which every layout puts first, is read.
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let response = handlers::api_versions::unsupported();
        return Ok(ready(key, encode(key, 0, correlation_id, &response)));
    }
    let header =
        decode_request_header_from_buffer(&mut frame).map_err(|e| ProtocolError::Malformed {
            key,
            version,
            reason: e.to_string(),
        })?;
    let correlation_id = header.correlation_id;
    let client = Client {
        client_id: header
            .client_id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        session: session.clone(),
    };
    if !versions::supports(key, version) {
        return Err(ProtocolError::UnsupportedVersion { key, version });
    }
    let ctx = Ctx {
        key,
        version,
        correlation_id,
        meter: RequestMeter::for_client(broker, &client.session.principal.name, &client.client_id),
        quotas: broker.quotas.clone(),
    };
    let b = broker.clone();
    match key {
        ApiKey::ApiVersions => run(ctx, frame, move |r: ApiVersionsRequest| async move {
            handlers::api_versions::handle(r)
        }),
        ApiKey::Metadata => run(ctx, frame, move |r| {
            handlers::metadata::handle(b, r, version, client)
        }),
        ApiKey::Produce => {
            let request_bytes = frame.len() as u64;
            let request: ProduceRequest = decode(&ctx, &mut frame)?;
            let (pending, queued) =
                PollTimed::new(handlers::produce::start(&b, request, version, &client)).await;
            let reply: Reply = Box::pin(async move {
                let meter = ctx.meter.as_ref();
                match pending {
                    None => {
                        // acks=0: nothing to answer, but the bytes count and the connection's
                        // next answers wait as Kafka mutes it.
                        let ms = throttle(&b, QuotaKey::ProducerByteRate, &client, request_bytes)
                            .max(request_time::throttle(meter, queued));
                        ctx.quotas.hold(ms).await;
                        Ok(None)
                    }
                    Some(pending) => {
                        let (mut response, spent) = PollTimed::new(pending).await;
                        let ms = throttle(&b, QuotaKey::ProducerByteRate, &client, request_bytes)
                            .max(request_time::throttle(meter, queued + spent));
                        response.throttle_at_least(ms);
                        ctx.quotas.hold(ms).await;
                        encode(key, version, correlation_id, &response).map(Some)
                    }
                }
            });
            Ok(Started { key, reply })
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode(&ctx, &mut frame)?;
            let reply: Reply =
                Box::pin(async move {
                    let ((mut response, reservation), spent) = PollTimed::new(
                        handlers::fetch::handle(b.clone(), request, version, client.clone()),
                    )
                    .await;
                    let bytes: u64 = response
                        .responses
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
                        .sum();
                    let ms = throttle(&b, QuotaKey::ConsumerByteRate, &client, bytes)
                        .max(request_time::throttle(ctx.meter.as_ref(), spent));
                    response.throttle_at_least(ms);
                    ctx.quotas.hold(ms).await;
                    encode(key, version, correlation_id, &response)
                        .map(|frame| Some(held_until_sent(frame, reservation)))
                });
            Ok(Started { key, reply })
        }
        ApiKey::ListOffsets => run(ctx, frame, move |r| {
            handlers::list_offsets::handle(b, r, version, client)
        }),
        ApiKey::CreateTopics => run(ctx, frame, move |r| {
            handlers::admin::create_topics(b, r, version, client)
        }),
        ApiKey::DeleteTopics => run(ctx, frame, move |r| {
            handlers::admin::delete_topics(b, r, version, client)
        }),
        ApiKey::DeleteRecords => run(ctx, frame, move |r| {
            handlers::delete_records::handle(b, r, client)
        }),
        ApiKey::CreatePartitions => run(ctx, frame, move |r| {
            handlers::admin::create_partitions(b, r, client)
        }),
        ApiKey::DescribeConfigs => run(ctx, frame, move |r| {
            handlers::configs::describe(b, r, version, client)
        }),
        ApiKey::AlterConfigs => run(ctx, frame, move |r| handlers::configs::alter(b, r, client)),
        ApiKey::IncrementalAlterConfigs => run(ctx, frame, move |r| {
            handlers::configs::incremental_alter(b, r, client)
        }),
        ApiKey::DescribeCluster => run(ctx, frame, move |r: DescribeClusterRequest| async move {
            handlers::cluster::describe(&b, r, &client)
        }),
        ApiKey::InitProducerId => run(ctx, frame, move |r| {
            handlers::producer::init_producer_id(b, r, client)
        }),
        ApiKey::FindCoordinator => run(ctx, frame, move |r| {
            handlers::groups::find_coordinator(b, r, version, client)
        }),
        ApiKey::JoinGroup => run(ctx, frame, move |r| {
            handlers::groups::join_group(b, r, version, client)
        }),
        ApiKey::SyncGroup => run(ctx, frame, move |r| {
            handlers::groups::sync_group(b, r, version, client)
        }),
        ApiKey::Heartbeat => run(ctx, frame, move |r| {
            handlers::groups::heartbeat(b, r, client)
        }),
        ApiKey::LeaveGroup => run(ctx, frame, move |r| {
            handlers::groups::leave_group(b, r, version, client)
        }),
        ApiKey::ListGroups => run(ctx, frame, move |r| {
            handlers::groups::list_groups(b, r, version, client)
        }),
        ApiKey::DescribeGroups => run(ctx, frame, move |r| {
            handlers::groups::describe_groups(b, r, version, client)
        }),
        ApiKey::DeleteGroups => run(ctx, frame, move |r| {
            handlers::groups::delete_groups(b, r, client)
        }),
        ApiKey::OffsetCommit => run(ctx, frame, move |r| {
            handlers::offsets::offset_commit(b, r, version, client)
        }),
        ApiKey::OffsetFetch => run(ctx, frame, move |r| {
            handlers::offsets::offset_fetch(b, r, version, client)
        }),
        ApiKey::OffsetDelete => run(ctx, frame, move |r| {
            handlers::offsets::offset_delete(b, r, client)
        }),
        ApiKey::ConsumerGroupHeartbeat => run(ctx, frame, move |r| {
            handlers::consumer_groups::heartbeat(b, r, version, client)
        }),
        ApiKey::ConsumerGroupDescribe => run(ctx, frame, move |r| {
            handlers::consumer_groups::describe(b, r, version, client)
        }),
        ApiKey::DescribeUserScramCredentials => run(ctx, frame, move |r| {
            handlers::scram_users::describe(b, r, client)
        }),
        ApiKey::AlterUserScramCredentials => run(ctx, frame, move |r| {
            handlers::scram_users::alter(b, r, client)
        }),
        ApiKey::DescribeAcls => run(ctx, frame, move |r| handlers::acls::describe(b, r, client)),
        ApiKey::CreateAcls => run(ctx, frame, move |r| handlers::acls::create(b, r, client)),
        ApiKey::DeleteAcls => run(ctx, frame, move |r| handlers::acls::delete(b, r, client)),
        ApiKey::DescribeClientQuotas => run(ctx, frame, move |r| {
            handlers::client_quotas::describe(b, r, client)
        }),
        ApiKey::AlterClientQuotas => run(ctx, frame, move |r| {
            handlers::client_quotas::alter(b, r, client)
        }),
        // The SASL exchange of SASL listeners never reaches here (see `crate::sasl`); on other
        // listeners it is out of place, as Kafka answers.
        ApiKey::SaslHandshake => run(ctx, frame, move |_: SaslHandshakeRequest| async move {
            SaslHandshakeResponse::default()
                .with_error_code(kafka_protocol::ResponseError::IllegalSaslState.code())
        }),
        ApiKey::SaslAuthenticate => run(ctx, frame, move |_: SaslAuthenticateRequest| async move {
            SaslAuthenticateResponse::default()
                .with_error_code(kafka_protocol::ResponseError::IllegalSaslState.code())
                .with_error_message(Some(kafka_protocol::protocol::StrBytes::from_static_str(
                    "this listener does not use SASL",
                )))
        }),
        _ => Err(ProtocolError::UnsupportedVersion { key, version }),
    }
}

/// Records `bytes` against `client`'s `key` quota; the throttle time in ms (see
/// [`crate::quotas`]).
fn throttle(broker: &Broker, key: QuotaKey, client: &Client, bytes: u64) -> i32 {
    if bytes == 0 {
        return 0;
    }
    let ms = broker.quotas.record(
        key,
        &client.session.principal.name,
        &client.client_id,
        bytes as f64,
    );
    i32::try_from(ms).unwrap_or(i32::MAX)
}

struct Ctx {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    /// The client's request quota, if one applies.
    meter: Option<RequestMeter>,
    /// Where throttled responses are held back ([`crate::quotas::QuotaManager::hold`]).
    quotas: Arc<crate::quotas::QuotaManager>,
}

fn decode<T: Decodable>(ctx: &Ctx, frame: &mut Bytes) -> Result<T, ProtocolError> {
    T::decode(frame, ctx.version).map_err(|e| ProtocolError::Malformed {
        key: ctx.key,
        version: ctx.version,
        reason: e.to_string(),
    })
}

fn run<Req, Resp, F, Fut>(ctx: Ctx, mut frame: Bytes, handler: F) -> Result<Started, ProtocolError>
where
    Req: Decodable,
    Resp: Encodable + ThrottleTime + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let request = decode(&ctx, &mut frame)?;
    let pending = handler(request);
    let key = ctx.key;
    let reply: Reply = Box::pin(async move {
        let (mut response, spent) = PollTimed::new(pending).await;
        let ms = request_time::throttle(ctx.meter.as_ref(), spent);
        response.throttle_at_least(ms);
        let frame = encode(ctx.key, ctx.version, ctx.correlation_id, &response);
        ctx.quotas.hold(ms).await;
        frame.map(Some)
    });
    Ok(Started { key, reply })
}

/// A response frame that keeps `reservation` (its records' share of the fetch memory budget)
/// until the connection has written it and dropped it.
fn held_until_sent(frame: Bytes, reservation: Reservation) -> Bytes {
    struct Held {
        frame: Bytes,
        _reservation: Reservation,
    }
    impl AsRef<[u8]> for Held {
        fn as_ref(&self) -> &[u8] {
            &self.frame
        }
    }
    if reservation.bytes() == 0 {
        return frame;
    }
    Bytes::from_owner(Held {
        frame,
        _reservation: reservation,
    })
}

fn ready(key: ApiKey, bytes: Result<Bytes, EncodeError>) -> Started {
    Started {
        key,
        reply: Box::pin(std::future::ready(bytes.map(Some))),
    }
}

/// Encodes a response frame: length prefix, response header, body.
pub fn encode<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, EncodeError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = key.response_header_version(version);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let result = header
        .encode(&mut buf, header_version)
        .and_then(|()| body.encode(&mut buf, version));
    if let Err(e) = result {
        return Err(EncodeError {
            key,
            version,
            reason: e.to_string(),
        });
    }
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}
