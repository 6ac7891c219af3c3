//! The one place where Fjord's errors become Kafka error codes.

use fjord_coordinator::{BatchRejection, CoordinatorError};
use fjord_storage::batch::BatchError;
use fjord_storage::reader::ReadError;
use fjord_storage::writer::WriteError;
use kafka_protocol::ResponseError;

/// Kafka error code for a coordinator error.
pub fn coordinator_code(e: &CoordinatorError) -> ResponseError {
    match e {
        CoordinatorError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        CoordinatorError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        CoordinatorError::Invalid(_) => ResponseError::InvalidRequest,
        CoordinatorError::ProducerFenced(_) => ResponseError::InvalidProducerEpoch,
        CoordinatorError::Storage(_) | CoordinatorError::Unavailable(_) => {
            ResponseError::CoordinatorNotAvailable
        }
        CoordinatorError::Corrupt(_) => ResponseError::UnknownServerError,
        CoordinatorError::OffsetOutOfRange(_) => ResponseError::OffsetOutOfRange,
        // Another broker wrote what this one read: its view was stale.
        CoordinatorError::Fenced(_) => ResponseError::NotCoordinator,
    }
}

/// Kafka error code for a batch the coordinator did not append.
pub fn rejection_code(r: BatchRejection) -> ResponseError {
    match r {
        BatchRejection::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        BatchRejection::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber,
        BatchRejection::ProducerFenced => ResponseError::InvalidProducerEpoch,
        BatchRejection::UnknownProducerId => ResponseError::UnknownProducerId,
        BatchRejection::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
    }
}

/// Kafka error code for a record set refused on produce.
pub fn batch_code(e: &BatchError) -> ResponseError {
    match e {
        BatchError::Corrupt(_) | BatchError::Crc { .. } => ResponseError::CorruptMessage,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::Invalid(_) => ResponseError::InvalidRecord,
    }
}

/// Kafka error code for a failed flush (all retriable, so clients try again).
pub fn write_code(e: &WriteError) -> ResponseError {
    match e {
        WriteError::Upload(_) | WriteError::Commit(_) => ResponseError::KafkaStorageError,
        WriteError::ShuttingDown => ResponseError::NotLeaderOrFollower,
    }
}

/// Kafka error code for a failed read.
pub fn read_code(_: &ReadError) -> ResponseError {
    ResponseError::KafkaStorageError
}
