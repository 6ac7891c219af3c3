"""The values the gateway client sends and returns, and their wire conversion."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union

from fjord.errors import OUTCOME_UNKNOWN_CODES, PublishError
from fjord.gateway.v1 import gateway_pb2 as pb

#: Environment variable with the gateway's ``host:port``.
ADDRESS_ENV = "FJORD_GATEWAY_ADDRESS"
#: Used when :data:`ADDRESS_ENV` is not set.
DEFAULT_ADDRESS = "localhost:9095"

#: What a value, key or header value may be given as (``str`` is encoded as UTF-8).
BytesLike = Union[bytes, bytearray, memoryview, str]
#: Headers as a mapping or a sequence of pairs (repeated keys allowed); ``None`` values are null.
Headers = Union[Mapping[str, Optional[BytesLike]], Sequence[Tuple[str, Optional[BytesLike]]]]


def default_address() -> str:
    """``$FJORD_GATEWAY_ADDRESS``, else :data:`DEFAULT_ADDRESS`."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


@dataclass(frozen=True)
class Message:
    """A message to publish."""

    value: BytesLike
    key: Optional[BytesLike] = None
    headers: Optional[Headers] = None
    #: Milliseconds since the Unix epoch; ``None``: the time of sending.
    timestamp_ms: Optional[int] = None
    #: A partition on whichever cluster the message lands; ``None``: the cluster's client picks.
    partition: Optional[int] = None


@dataclass(frozen=True)
class Delivered:
    """Where a message was stored."""

    cluster: str
    partition: int
    offset: int
    #: Clusters tried (1: the first one took it).
    attempts: int
    #: The message's ``fjord-hlc`` header value.
    hlc: int


@dataclass(frozen=True)
class Failure:
    """Why one message of a batch was not stored (the others may have been).

    ``outcome_unknown``: it may have been stored after all (``TIMEOUT``, or an earlier attempt of
    the call timed out), so sending it again may store it twice."""

    code: str
    message: str
    retriable: bool
    clusters_tried: Tuple[str, ...] = field(default_factory=tuple)
    outcome_unknown: bool = False

    def to_exception(self) -> PublishError:
        return PublishError(self.code, self.message, self.retriable, self.clusters_tried,
                            outcome_unknown=self.outcome_unknown)


#: One result of a batch, in the order of the batch's messages.
Result = Union[Delivered, Failure]


def _bytes(v: BytesLike) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    return bytes(v)


def to_pb(m: Union[Message, BytesLike]) -> pb.Message:
    """A message (or a bare value) on the wire."""
    if not isinstance(m, Message):
        m = Message(value=m)
    out = pb.Message(value=_bytes(m.value))
    if m.key is not None:
        out.key = _bytes(m.key)
    if m.timestamp_ms is not None:
        out.timestamp_ms = int(m.timestamp_ms)
    if m.partition is not None:
        out.partition = int(m.partition)
    if m.headers:
        pairs = m.headers.items() if isinstance(m.headers, Mapping) else m.headers
        for k, v in pairs:
            h = out.headers.add(key=k)
            if v is not None:
                h.value = _bytes(v)
    return out


def from_pb(r: pb.MessageResult) -> Result:
    """A wire result as :class:`Delivered` or :class:`Failure`."""
    which = r.WhichOneof("outcome")
    if which == "delivered":
        d = r.delivered
        return Delivered(d.cluster, d.partition, d.offset, d.attempts, d.hlc)
    if which == "failure":
        f = r.failure
        code = pb.ErrorCode.Name(f.code).removeprefix("ERROR_CODE_") if f.code in pb.ErrorCode.values() else str(f.code)
        return Failure(code, f.message, f.retriable, tuple(f.clusters_tried),
                       outcome_unknown=code in OUTCOME_UNKNOWN_CODES)
    return Failure("UNSPECIFIED", "the gateway sent an empty result", False)
