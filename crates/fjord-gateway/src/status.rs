//! The one place where errors become wire codes: request-level errors to gRPC status codes, and
//! per-message failures to `fjord.gateway.v1.ErrorCode` (with whether a retry may succeed).

use tonic::{Code, Status};

use crate::backend::ErrorKind;
use crate::dispatch::{FailureKind, MessageOutcome};
use crate::limits::Exceeded;
use crate::pb;

/// Why a whole request was refused (nothing of it was produced).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("the batch has no messages")]
    EmptyBatch,
    #[error("the topic name is empty")]
    EmptyTopic,
    #[error("{count} messages in one batch; the limit is {limit}")]
    TooManyMessages { count: usize, limit: usize },
    #[error("message {index} has {bytes} bytes (key, value and headers); the limit is {limit}")]
    MessageTooLarge {
        index: usize,
        bytes: usize,
        limit: usize,
    },
    #[error("the batch has {bytes} bytes; the limit is {limit}")]
    RequestTooLarge { bytes: usize, limit: usize },
    #[error("message {index}: partition {partition} is negative")]
    BadPartition { index: usize, partition: i32 },
    #[error("no route for topic {topic:?} and no default route")]
    NoRoute { topic: String },
    /// Over the caller's message or byte rate; a batch larger than the burst never passes.
    #[error("rate limit of caller {caller:?} exceeded ({} {}/s); {}",
        .limit.rate, .limit.budget.unit(), rate_limit_hint(.limit))]
    RateLimited { caller: String, limit: Exceeded },
    #[error("the gateway holds {limit} bytes of requests already; retry shortly")]
    Overloaded { limit: usize },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// `[[caller]]` does not allow this caller this topic.
    #[error("{0}")]
    PermissionDenied(String),
    /// `[auth]`: no valid bearer token (and no verified client certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// `[auth]`: the caller's address sent too many tokens that failed their check lately.
    #[error(
        "too many failed bearer tokens from this address; the token was not checked (retry in \
         a few seconds with a valid token)"
    )]
    AuthenticationThrottled,
}

/// What a rate-limited caller should do.
fn rate_limit_hint(limit: &Exceeded) -> String {
    if limit.over_burst {
        format!(
            "the batch is larger than the burst of {} {}: split it",
            limit.burst,
            limit.budget.unit()
        )
    } else {
        format!("retry in {:?}", limit.retry_after)
    }
}

impl RequestError {
    pub fn code(&self) -> Code {
        match self {
            Self::EmptyBatch
            | Self::EmptyTopic
            | Self::TooManyMessages { .. }
            | Self::MessageTooLarge { .. }
            | Self::RequestTooLarge { .. }
            | Self::BadPartition { .. } => Code::InvalidArgument,
            Self::NoRoute { .. } => Code::NotFound,
            Self::RateLimited { .. } | Self::Overloaded { .. } | Self::AuthenticationThrottled => {
                Code::ResourceExhausted
            }
            Self::ShuttingDown => Code::Unavailable,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// The `code` label of a gRPC status for metrics.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The wire code of a per-message failure, and whether sending the message again may succeed.
pub fn failure_code(kind: FailureKind) -> (pb::ErrorCode, bool) {
    use pb::ErrorCode as E;
    match kind {
        FailureKind::NoHealthyCluster => (E::NoHealthyCluster, true),
        FailureKind::Deadline => (E::Timeout, true),
        // Sending again may store it twice, but may also be the only way to store it.
        FailureKind::OutcomeUnknown => (E::OutcomeUnknown, true),
        FailureKind::Backend(k) => match k {
            ErrorKind::Timeout => (E::Timeout, true),
            ErrorKind::Unavailable => (E::BackendUnavailable, true),
            ErrorKind::QueueFull => (E::ResourceExhausted, true),
            ErrorKind::TooLarge => (E::MessageTooLarge, false),
            ErrorKind::UnknownTopicOrPartition => (E::UnknownTopicOrPartition, true),
            ErrorKind::Rejected => (E::Rejected, false),
        },
    }
}

/// The `code` label of a per-message failure for metrics.
pub fn failure_label(kind: FailureKind) -> &'static str {
    use pb::ErrorCode as E;
    match failure_code(kind).0 {
        E::Unspecified => "unspecified",
        E::Timeout => "timeout",
        E::NoHealthyCluster => "no_healthy_cluster",
        E::MessageTooLarge => "message_too_large",
        E::UnknownTopicOrPartition => "unknown_topic_or_partition",
        E::Rejected => "rejected",
        E::BackendUnavailable => "backend_unavailable",
        E::OutcomeUnknown => "outcome_unknown",
        E::ResourceExhausted => "resource_exhausted",
    }
}

/// A message's outcome as it goes on the wire.
pub fn to_result(outcome: MessageOutcome) -> pb::MessageResult {
    use pb::message_result::Outcome as O;
    let outcome = match outcome {
        MessageOutcome::Delivered {
            cluster,
            stored,
            attempts,
            hlc,
        } => O::Delivered(pb::Delivered {
            cluster: cluster.to_string(),
            partition: stored.partition,
            offset: stored.offset,
            attempts,
            hlc,
        }),
        MessageOutcome::Failed {
            kind,
            detail,
            tried,
        } => {
            let (code, retriable) = failure_code(kind);
            O::Failure(pb::Failure {
                code: code as i32,
                message: detail,
                retriable,
                clusters_tried: tried.iter().map(|c| c.to_string()).collect(),
            })
        }
    };
    pb::MessageResult {
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Budget;
    use std::time::Duration;

    #[test]
    fn request_errors_map_to_grpc_codes() {
        assert_eq!(RequestError::EmptyBatch.code(), Code::InvalidArgument);
        let s: Status = RequestError::NoRoute { topic: "t".into() }.into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("no route for topic \"t\""));
        assert_eq!(
            RequestError::Overloaded { limit: 1 }.code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn rate_limits_say_which_budget_and_what_to_do() {
        let limited = |budget, over_burst| RequestError::RateLimited {
            caller: "c".into(),
            limit: Exceeded {
                budget,
                rate: 100.0,
                burst: 200.0,
                retry_after: Duration::from_millis(250),
                over_burst,
            },
        };
        let s: Status = limited(Budget::Messages, false).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "rate limit of caller \"c\" exceeded (100 messages/s); retry in 250ms"
        );
        let s: Status = limited(Budget::Bytes, true).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "rate limit of caller \"c\" exceeded (100 bytes/s); the batch is larger than the \
             burst of 200 bytes: split it"
        );
    }

    #[test]
    fn failures_map_to_codes_and_retriability() {
        assert_eq!(
            failure_code(FailureKind::Backend(ErrorKind::TooLarge)),
            (pb::ErrorCode::MessageTooLarge, false)
        );
        assert_eq!(
            failure_code(FailureKind::NoHealthyCluster),
            (pb::ErrorCode::NoHealthyCluster, true)
        );
        assert_eq!(failure_label(FailureKind::Deadline), "timeout");
        assert_eq!(
            failure_code(FailureKind::OutcomeUnknown),
            (pb::ErrorCode::OutcomeUnknown, true)
        );
        assert_eq!(
            failure_code(FailureKind::Backend(ErrorKind::QueueFull)),
            (pb::ErrorCode::ResourceExhausted, true)
        );
    }
}
