//! `fjord gateway`: a gRPC produce front door for Kafka-compatible clusters.
//!
//! Callers send batches over gRPC (`proto/fjord/gateway/v1/gateway.proto`); the gateway routes
//! each message to a cluster of the topic's group, keeps per-key order while the clusters are
//! healthy, fails over to another cluster when one is sick, and answers where every message
//! landed. One long-lived librdkafka producer per cluster serves every caller.
//!
//! Modules, one concern each:
//! - [`config`]: the TOML settings and their validation
//! - [`routing`]: topic -> group, and the cluster of a message (rendezvous hashing, weights)
//! - [`hlc`]: the hybrid logical clock stamped on every message
//! - [`breaker`]: the circuit breaker state machine
//! - [`backend`]: the producer trait; [`kafka`]: its librdkafka implementation
//! - [`cluster`]: a cluster's producer and health, and the prober of open clusters
//! - [`limits`]: per-caller rate limits and the in-flight memory bound
//! - [`dispatch`]: delivering one batch (routing, hand-over, retries on other clusters)
//! - [`gateway`]: live state, reloads and request admission
//! - [`status`]: errors to gRPC codes and per-message error codes (the only place)
//! - [`service`]: the gRPC service; [`server`]: the process (listeners, signals, shutdown)
//! - [`tls`]: TLS on the gRPC listener (PEM files to rustls settings)
//! - [`auth`]: who is calling (bearer tokens, client certificates) and whether it may
//! - [`metrics`]: Prometheus metrics and their endpoint

pub mod auth;
pub mod backend;
pub mod breaker;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod hlc;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;

/// Messages and the service trait generated from `fjord/gateway/v1/gateway.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("fjord.gateway.v1");
}

/// The encoded descriptors of the gateway's proto files, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptor.bin"));

pub use config::GatewayConfig;
pub use gateway::{Gateway, GatewayError};
pub use server::run;
