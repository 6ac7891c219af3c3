//! One module per API family. Each takes a decoded request and returns the response to encode.

pub mod acls;
pub mod admin;
pub mod api_versions;
pub mod client_quotas;
pub mod cluster;
pub mod configs;
pub mod consumer_groups;
pub mod delete_records;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producer;
pub mod scram_users;

use fjord_coordinator::{TopicMeta, TopicPartition};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::error::coordinator_code;

/// A protocol string from a Rust string.
pub(crate) fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Partition `index` of a topic looked up by name, or the error code to answer for it.
pub(crate) fn partition_of(
    meta: &fjord_coordinator::Result<Option<TopicMeta>>,
    index: i32,
) -> Result<TopicPartition, ResponseError> {
    match meta {
        Ok(Some(m)) if index >= 0 && index < m.partitions => Ok(TopicPartition {
            topic_id: m.id,
            partition: index,
        }),
        Ok(_) => Err(ResponseError::UnknownTopicOrPartition),
        Err(e) => Err(coordinator_code(e)),
    }
}
