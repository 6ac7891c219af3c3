"""Exceptions raised by the gateway client.

Two tiers, as in the Rust client:

* :class:`GatewayError` and its subclasses: a call failed as a whole (nothing of it was
  produced), mapped from the gRPC status;
* :class:`PublishError`: the gateway answered, but one message was not stored (for
  :func:`fjord.publish`; :meth:`fjord.Publisher.publish_batch` returns :class:`fjord.Failure`
  values instead, so a caller retries only what failed), or its outcome is unknown: codes
  ``"TIMEOUT"`` and ``"OUTCOME_UNKNOWN"`` (:attr:`PublishError.outcome_unknown`) say a cluster
  tried may have stored it, so sending it again may store it twice.

``retriable`` says whether sending the same thing again may succeed.
"""

from __future__ import annotations

from typing import Optional, Sequence

import grpc


class FjordError(Exception):
    """Base class of every error of the ``fjord`` package."""

    retriable: bool = False


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


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, is shutting down, or the deadline passed."""


class PublishError(FjordError):
    """The gateway did not confirm a message as stored.

    ``code`` is the gateway's error code name (``"TIMEOUT"``, ``"NO_HEALTHY_CLUSTER"``,
    ``"MESSAGE_TOO_LARGE"``, ``"UNKNOWN_TOPIC_OR_PARTITION"``, ``"REJECTED"``,
    ``"BACKEND_UNAVAILABLE"``, ``"OUTCOME_UNKNOWN"``, ``"RESOURCE_EXHAUSTED"``: backpressure,
    retry after a short delay). For ``"TIMEOUT"`` and
    ``"OUTCOME_UNKNOWN"`` the message may have been stored anyway (:attr:`outcome_unknown`);
    for every other code it was not.
    """

    def __init__(
        self,
        code: str,
        message: str,
        retriable: bool,
        clusters_tried: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retriable = retriable
        self.clusters_tried = list(clusters_tried or [])

    @property
    def outcome_unknown(self) -> bool:
        """Whether a cluster tried may have stored the message anyway (sending it again may
        store it twice)."""
        return self.code in _OUTCOME_UNKNOWN


#: Per-message codes whose message may have been stored anyway.
_OUTCOME_UNKNOWN = frozenset({"TIMEOUT", "OUTCOME_UNKNOWN"})

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
    grpc.StatusCode.UNAVAILABLE: GatewayUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: GatewayUnavailable,
}


def from_rpc_error(error: grpc.RpcError) -> GatewayError:
    """The exception for a failed gRPC call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, GatewayError)(code, details)
