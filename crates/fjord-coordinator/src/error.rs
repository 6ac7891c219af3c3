//! Errors a coordinator returns. The broker maps them to Kafka error codes in one place.

/// Result alias for coordinator calls.
pub type Result<T> = std::result::Result<T, CoordinatorError>;

/// What went wrong in a coordinator call.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A topic with this name already exists.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// No topic with this name or id.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// A request that can never succeed as given (bad partition count, bad config, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The producer id is not known or its epoch is not the current one.
    #[error("producer fenced: {0}")]
    ProducerFenced(String),
    /// The store could not be read or written (I/O, database); the call may be retried.
    #[error("coordinator storage failure: {0}")]
    Storage(String),
    /// The store was found in a state it cannot have written (corruption, bad version).
    #[error("coordinator state is corrupt: {0}")]
    Corrupt(String),
    /// The coordinator is shutting down or failed earlier and refuses further writes.
    #[error("coordinator is unavailable: {0}")]
    Unavailable(String),
    /// An offset outside the partition's log (DeleteRecords beyond the high watermark).
    #[error("offset out of range: {0}")]
    OffsetOutOfRange(String),
    /// A conditional write found the state changed since the caller read it (another broker
    /// wrote it); nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl CoordinatorError {
    /// Whether a later retry of the same call may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Unavailable(_))
    }
}
