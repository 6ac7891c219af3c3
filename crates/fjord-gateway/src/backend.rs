//! What the gateway needs from a cluster's producer, as a trait: hand over a record, learn where
//! it was stored; probe the cluster; flush on shutdown.
//!
//! [`crate::kafka`] implements it with librdkafka; tests implement it in memory with injected
//! faults. Contract of [`Producer::send`]: it never blocks, and records handed over one after
//! another by one caller keep that order within a partition of the cluster (this is what per-key
//! order rests on). The returned future resolves once the cluster has stored the record, or
//! with the reason it did not.

use std::time::Duration;

use futures::future::BoxFuture;

/// One message as it goes to a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// The caller's headers followed by the gateway's (`fjord-hlc`, `fjord-gateway`).
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub timestamp_ms: Option<i64>,
    pub partition: Option<i32>,
}

/// Where a cluster stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Why a cluster did not store a record, in the terms the gateway acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// Connection trouble, no leader, brokers down, the client broken: the cluster is sick.
    Unavailable,
    /// The client's local queue is full (backpressure from this cluster).
    QueueFull,
    /// The record is over the cluster's size limit.
    TooLarge,
    /// The topic or partition does not exist on this cluster.
    UnknownTopicOrPartition,
    /// The cluster refused this record (authorization, policy, invalid record).
    Rejected,
}

impl ErrorKind {
    /// Whether the failure says the cluster is unhealthy (counts against its breaker).
    pub fn is_cluster_failure(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable)
    }

    /// Whether another cluster of the group may take the record.
    pub fn retry_elsewhere(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Unavailable | Self::QueueFull | Self::UnknownTopicOrPartition
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct ProduceError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ProduceError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

pub type SendFuture = BoxFuture<'static, Result<Stored, ProduceError>>;

/// A long-lived producer for one cluster, shared by every request.
pub trait Producer: Send + Sync + std::fmt::Debug {
    /// Hands a record over (see the module documentation for the ordering contract).
    fn send(&self, record: Record<'_>) -> SendFuture;

    /// Checks that the cluster answers a metadata request within `timeout`.
    fn probe(&self, timeout: Duration) -> BoxFuture<'static, Result<(), ProduceError>>;

    /// Waits (at most `timeout`) until every record handed over is stored or failed.
    fn flush(&self, timeout: Duration) -> BoxFuture<'static, ()>;
}
