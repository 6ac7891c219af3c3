//! What the endpoint said about one delivery attempt, as one of three verdicts.
//!
//! Owns the one table that maps gRPC replies to actions (the same table is in the proto file and
//! docs/forwarder.md; keep them in step). A reply with an `Outcome` uses its action; a call that
//! ended with a status other than OK maps by code:
//!
//! | code | verdict | why |
//! |---|---|---|
//! | OK + ACTION_ACK | ack | |
//! | OK + ACTION_RETRY | retry (after `retry_after_ms` if set) | |
//! | OK + ACTION_DEAD_LETTER | dead-letter | |
//! | OK + ACTION_UNSPECIFIED | retry | a handler bug must not lose records |
//! | ALREADY_EXISTS | ack | the service had processed the record already (a redelivery) |
//! | INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, DATA_LOSS | dead-letter | the record itself is unacceptable; trying again cannot help |
//! | UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED | retry | transient by definition |
//! | UNKNOWN, INTERNAL | retry | an exception in the handler (Python's default); may be transient |
//! | NOT_FOUND | retry | what the record refers to may not exist yet |
//! | UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED | retry | the endpoint is misconfigured: records must not be dead-lettered for it |
//! | transport error, delivery timeout | retry | as UNAVAILABLE / DEADLINE_EXCEEDED |
//!
//! Every retry verdict counts as a failed attempt; the retry policy (`retry.rs`) bounds them, so
//! a poison record ends in the dead-letter topic instead of stalling its partition.

use std::time::Duration;

use tonic::Code;

use crate::proto::{Action, Outcome};

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Try again; `after` is the delay the handler asked for, if any.
    Retry {
        after: Option<Duration>,
        error: String,
    },
    DeadLetter {
        reason: String,
    },
}

impl Verdict {
    /// The label of this verdict in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Ack => "ack",
            Verdict::Retry { .. } => "retry",
            Verdict::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// The verdict on a reply of the endpoint.
pub fn from_outcome(outcome: &Outcome) -> Verdict {
    match Action::try_from(outcome.action) {
        Ok(Action::Ack) => Verdict::Ack,
        Ok(Action::Retry) => Verdict::Retry {
            after: (outcome.retry_after_ms > 0)
                .then(|| Duration::from_millis(outcome.retry_after_ms)),
            error: if outcome.reason.is_empty() {
                "handler answered RETRY".to_string()
            } else {
                outcome.reason.clone()
            },
        },
        Ok(Action::DeadLetter) => Verdict::DeadLetter {
            reason: if outcome.reason.is_empty() {
                "handler answered DEAD_LETTER".to_string()
            } else {
                outcome.reason.clone()
            },
        },
        Ok(Action::Unspecified) | Err(_) => Verdict::Retry {
            after: None,
            error: format!("handler answered no action ({})", outcome.action),
        },
    }
}

/// The verdict on a call that ended with a non-OK status.
pub fn from_status(code: Code, message: &str) -> Verdict {
    let described = || format!("{code:?}: {message}");
    match code {
        Code::Ok | Code::AlreadyExists => Verdict::Ack,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::DataLoss => {
            Verdict::DeadLetter {
                reason: described(),
            }
        }
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::Unauthenticated => Verdict::Retry {
            after: None,
            error: described(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(action: Action, retry_after_ms: u64, reason: &str) -> Outcome {
        Outcome {
            action: action as i32,
            retry_after_ms,
            reason: reason.into(),
        }
    }

    #[test]
    fn outcomes_map_to_their_action() {
        assert_eq!(from_outcome(&outcome(Action::Ack, 0, "")), Verdict::Ack);
        assert_eq!(
            from_outcome(&outcome(Action::Retry, 250, "busy")),
            Verdict::Retry {
                after: Some(Duration::from_millis(250)),
                error: "busy".into()
            }
        );
        assert!(matches!(
            from_outcome(&outcome(Action::Retry, 0, "")),
            Verdict::Retry { after: None, .. }
        ));
        assert_eq!(
            from_outcome(&outcome(Action::DeadLetter, 0, "bad json")),
            Verdict::DeadLetter {
                reason: "bad json".into()
            }
        );
    }

    #[test]
    fn missing_or_unknown_action_is_a_retry() {
        assert_eq!(
            from_outcome(&outcome(Action::Unspecified, 0, "")).label(),
            "retry"
        );
        let unknown = Outcome {
            action: 42,
            ..Default::default()
        };
        assert_eq!(from_outcome(&unknown).label(), "retry");
    }

    #[test]
    fn status_codes_follow_the_table() {
        let dead = [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::DataLoss,
        ];
        let retry = [
            Code::Cancelled,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::Unauthenticated,
        ];
        for c in dead {
            assert_eq!(from_status(c, "x").label(), "dead_letter", "{c:?}");
        }
        for c in retry {
            assert_eq!(from_status(c, "x").label(), "retry", "{c:?}");
        }
        assert_eq!(from_status(Code::AlreadyExists, "dup"), Verdict::Ack);
        match from_status(Code::InvalidArgument, "no such field") {
            Verdict::DeadLetter { reason } => assert!(reason.contains("no such field")),
            v => panic!("{v:?}"),
        }
    }
}
