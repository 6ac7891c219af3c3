//! One module per API family. Each takes a decoded request and returns the response to encode.

pub mod admin;
pub mod api_versions;
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

use kafka_protocol::protocol::StrBytes;

/// A protocol string from a Rust string.
pub(crate) fn s(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}
