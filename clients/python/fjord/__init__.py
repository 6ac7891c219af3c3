"""Fjord's Python client.

Publishing through ``fjord gateway`` (the gRPC produce front door)::

    import fjord
    fjord.publish("orders", b"hello", key=b"k1")     # gateway: $FJORD_GATEWAY_ADDRESS or localhost:9095

See :mod:`fjord.publisher` (sync, :class:`Publisher`) and :mod:`fjord.aio` (batching asyncio,
:class:`AsyncPublisher`); TLS and bearer tokens for both: :mod:`fjord.security`. Each feature
lives in its own module and is exported here explicitly.
"""

from fjord.aio import AsyncPublisher
from fjord.errors import (
    FjordError,
    GatewayError,
    GatewayUnavailable,
    InvalidRequest,
    NoRoute,
    OutcomeUnknown,
    Overloaded,
    PermissionDenied,
    PublishError,
    QueueFull,
    Unauthenticated,
)
from fjord.messages import Delivered, Failure, Message
from fjord.publisher import Publisher, publish, publish_batch
from fjord.receive import DeadLetter, Record, Retry, Server, serve

__all__ = [
    "AsyncPublisher",
    "DeadLetter",
    "Delivered",
    "Failure",
    "FjordError",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidRequest",
    "Message",
    "NoRoute",
    "OutcomeUnknown",
    "Overloaded",
    "PermissionDenied",
    "PublishError",
    "Publisher",
    "QueueFull",
    "Record",
    "Retry",
    "Server",
    "Unauthenticated",
    "publish",
    "publish_batch",
    "serve",
]
