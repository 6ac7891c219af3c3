"""Exceptions raised by the gateway client.

Two tiers, as in the Rust client:

* :class:`GatewayError` and its subclasses: a call failed as a whole, mapped from the gRPC
  status. Nothing of it was produced, except for :class:`OutcomeUnknown` (the request was sent
  and no answer came: some or all of it may have been stored);
* :class:`PublishError`: the gateway answered, but one message was not stored (for
  :func:`fjord.publish`; :meth:`fjord.Publisher.publish_batch` returns :class:`fjord.Failure`
  values instead, so a caller retries only what failed), or its outcome is unknown: codes
  ``"TIMEOUT"`` and ``"OUTCOME_UNKNOWN"`` (:attr:`PublishError.outcome_unknown`) say a cluster
  tried may have stored it, so sending it again may store it twice.

:class:`QueueFull` is the asyncio publisher's own: the message was not accepted at all.

``retriable`` says whether sending the same thing again may succeed; ``outcome_unknown`` says
whether what was sent may have been stored all the same, so that sending it again may store it
twice. Every error with ``outcome_unknown`` false means: nothing of it was produced.

One limit of gRPC: a unary call (:class:`fjord.Publisher`) whose connection breaks after the
request went out fails with ``UNAVAILABLE`` like a gateway that could not be reached, so for
:class:`fjord.Publisher` :class:`GatewayUnavailable` can, in that rare case, hide a stored batch.
:class:`fjord.AsyncPublisher` knows which batches it had written and reports those as
:class:`OutcomeUnknown`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import grpc


class FjordError(Exception):
    """Base class of every error of the ``fjord`` package."""

    retriable: bool = False
    #: What was sent may have been stored (resending may duplicate it); false: nothing was.
    outcome_unknown: bool = False


class GatewayError(FjordError):
    """A gateway call failed as a whole; ``code`` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retriable = code in _RETRIABLE


class InvalidRequest(GatewayError):
    """The request broke a limit or a rule (empty batch, oversize message, ...): INVALID_ARGUMENT."""


class NoRoute(GatewayError):
    """The topic has no route and the gateway no default route: NOT_FOUND."""


class Overloaded(GatewayError):
    """Rate limit or gateway memory bound hit (RESOURCE_EXHAUSTED): retry after a short delay."""


class Unauthenticated(GatewayError):
    """The gateway refused the caller's credentials: no bearer token, or one that is invalid or
    expired (UNAUTHENTICATED); also a token function that failed (nothing was sent then). Not
    retriable: the same call fails again until the token is fixed."""


class PermissionDenied(GatewayError):
    """The caller is authenticated but may not produce to the topic (PERMISSION_DENIED). Not
    retriable."""


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached or is shutting down, or the deadline passed before the
    request was sent: nothing of it was produced (but see :class:`OutcomeUnknown`)."""


class OutcomeUnknown(GatewayUnavailable):
    """The request was sent, but no answer came (the deadline passed, the connection or stream
    ended under it): some or all of it may have been stored. Sending it again may succeed
    (``retriable``) and may store messages twice."""

    outcome_unknown = True


class QueueFull(FjordError):
    """:class:`fjord.AsyncPublisher` holds ``max_queued_messages`` / ``max_queued_bytes`` not yet
    sent: the message was not accepted (nothing of it is sent). ``await publish(...)`` waits for
    room instead of raising (up to its timeout)."""

    retriable = True

    def __init__(self, message: str) -> None:
        super().__init__(message)


class PublishError(FjordError):
    """The gateway did not confirm a message as stored.

    ``code`` is the gateway's error code name (``"TIMEOUT"``, ``"NO_HEALTHY_CLUSTER"``,
    ``"MESSAGE_TOO_LARGE"``, ``"UNKNOWN_TOPIC_OR_PARTITION"``, ``"REJECTED"``,
    ``"BACKEND_UNAVAILABLE"``, ``"OUTCOME_UNKNOWN"``, ``"RESOURCE_EXHAUSTED"``: backpressure,
    retry after a short delay). ``outcome_unknown`` is true for ``"TIMEOUT"`` and
    ``"OUTCOME_UNKNOWN"`` (a cluster tried may have stored the message anyway) and when an
    earlier attempt of the same message had an unknown outcome; for every other code nothing
    was stored.
    """

    def __init__(
        self,
        code: str,
        message: str,
        retriable: bool,
        clusters_tried: Optional[Sequence[str]] = None,
        outcome_unknown: Optional[bool] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retriable = retriable
        self.clusters_tried = list(clusters_tried or [])
        #: Whether a cluster tried may have stored the message anyway (sending it again may
        #: store it twice).
        self.outcome_unknown = (
            code in OUTCOME_UNKNOWN_CODES if outcome_unknown is None else outcome_unknown
        )


#: Per-message codes whose message may have been stored anyway.
OUTCOME_UNKNOWN_CODES = frozenset({"TIMEOUT", "OUTCOME_UNKNOWN"})

_RETRIABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NoRoute,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: GatewayUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: GatewayUnavailable,
}


#: Statuses with which the gateway refuses a request before producing any of it. Any other status
#: of a call (or a stream batch) that was sent leaves its outcome unknown.
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})


#: Start of the error of a call whose token function (``token=callable``) failed; gRPC reports
#: it as UNAVAILABLE, :func:`from_rpc_error` as :class:`Unauthenticated` (nothing was sent).
TOKEN_FAILED = "fjord: the token function failed"


def unknown_after_earlier_attempt(error: FjordError) -> FjordError:
    """``error``, the last attempt's, marked outcome-unknown because an earlier attempt of the
    same thing was (the final error must not say "nothing was produced" then)."""
    if error.outcome_unknown:
        return error
    note = "; an earlier attempt timed out and may have stored it"
    if isinstance(error, PublishError):
        return PublishError(error.code, error.message + note, error.retriable,
                            error.clusters_tried, outcome_unknown=True)
    if isinstance(error, GatewayError):
        return OutcomeUnknown(error.code, error.details + note)
    return error


def from_rpc_error(error: grpc.RpcError, sent: bool = False) -> GatewayError:
    """The exception for a failed gRPC call (sync or asyncio).

    ``sent``: the request is known to have gone out, so a status other than a refusal
    (:data:`REFUSALS`) is :class:`OutcomeUnknown`. Whatever ``sent``, a passed deadline of a
    started call is :class:`OutcomeUnknown`: the gateway may have had the request. A call whose
    token function failed is :class:`Unauthenticated`: it never left the client.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if TOKEN_FAILED in details:
        return Unauthenticated(grpc.StatusCode.UNAUTHENTICATED, details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (sent and code not in REFUSALS):
        return OutcomeUnknown(code, f"{details} (the request was sent: it may have been stored)")
    return _BY_CODE.get(code, GatewayError)(code, details)
