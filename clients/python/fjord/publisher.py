"""Publishing through the fjord gateway, synchronously.

::

    import fjord

    fjord.publish("orders", b'{"id": 1}', key=b"customer-7")   # nothing else to configure

    with fjord.Publisher("gateway.internal:9095", timeout=5.0) as pub:
        results = pub.publish_batch("orders", [fjord.Message(b"a", key=b"k"), b"b"])
        failed = [r for r in results if isinstance(r, fjord.Failure)]

:func:`publish` uses one shared :class:`Publisher` per process, connected to
``$FJORD_GATEWAY_ADDRESS`` (default ``localhost:9095``); it is created on first use. Against a
gateway that wants TLS and a bearer token, set ``$FJORD_GATEWAY_TOKEN`` (and
``$FJORD_GATEWAY_CA_FILE``, ...: see :mod:`fjord.security`).

Fork: a :class:`Publisher` (also the shared one) used in a child forked after it was created opens
a channel of its own there on first use; the parent's channel is never used, nor closed, in the
child. Channels made in a forked child never take a connection from gRPC's process-wide pool,
which may hold one of the parent's. The module's locks are made anew in every child, so a fork
while another thread held one does not leave the child waiting forever.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import grpc

from fjord.errors import FjordError, from_rpc_error, unknown_after_earlier_attempt
from fjord.gateway.v1 import gateway_pb2 as pb
from fjord.gateway.v1 import gateway_pb2_grpc as pb_grpc
from fjord.messages import (
    BytesLike,
    Delivered,
    Failure,
    Headers,
    Message,
    Result,
    default_address,
    from_pb,
    to_pb,
)
from fjord.security import FilePath, Token, channel_security

#: Metadata key that names the caller for the gateway's per-caller rate limits.
CALLER_METADATA = "x-fjord-caller"

#: This process is a forked child (of one that imported fjord): see channel_options().
_forked = False


def channel_options(max_message_bytes: int) -> List[Tuple[str, Union[int, str]]]:
    options: List[Tuple[str, Union[int, str]]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if _forked:
        # Not from gRPC's process-wide subchannel pool, which may still hold a connection of the
        # parent's (its socket fails in the child: "Wrong file descriptor generation").
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


class Publisher:
    """A connection to a gateway (thread-safe; share one per process).

    :param address: ``host:port`` of the gateway (default: ``$FJORD_GATEWAY_ADDRESS`` or
        ``localhost:9095``).
    :param timeout: deadline of each call in seconds; the gateway stops retrying on other
        clusters by then.
    :param caller_id: sent as ``x-fjord-caller`` so the gateway rate-limits this caller on its own.
    :param retries: how often a call that failed as a whole with a retriable status
        (UNAVAILABLE, RESOURCE_EXHAUSTED, ...) is sent again; :meth:`publish` also resends a
        message whose failure is retriable. Resending after a timeout can store a message twice;
        once any attempt's outcome was unknown, the error finally raised says so
        (``outcome_unknown``), whatever the last attempt's failure.
    :param retry_backoff: seconds before the first resend, doubled each time.
    :param credentials: TLS credentials (``grpc.ssl_channel_credentials(...)``); ``None``:
        plaintext, unless an option below (or its environment variable) asks for TLS.
    :param token: a bearer token, or a function returning one (called for every call, so a
        refreshed token is picked up), sent as ``authorization: Bearer <token>``; implies TLS
        (default: ``$FJORD_GATEWAY_TOKEN``). A refused token raises
        :class:`fjord.Unauthenticated`, a topic the caller may not use
        :class:`fjord.PermissionDenied`.
    :param ca_file: PEM file of the CAs that verify the gateway (default:
        ``$FJORD_GATEWAY_CA_FILE``, else the system's roots); implies TLS.
    :param cert_file: / ``key_file``: client certificate (chain) and key for mutual TLS, both or
        neither (default: ``$FJORD_GATEWAY_CERT_FILE`` / ``$FJORD_GATEWAY_KEY_FILE``).
    :param server_name: the name to check in the gateway's certificate when it differs from the
        address's host (an IP address, a load balancer).

    See :mod:`fjord.security` for how these combine (``credentials`` and the files exclude each
    other; an empty string ignores the environment variable).
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        timeout: float = 30.0,
        caller_id: Optional[str] = None,
        retries: int = 3,
        retry_backoff: float = 0.1,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[Token] = None,
        ca_file: Optional[FilePath] = None,
        cert_file: Optional[FilePath] = None,
        key_file: Optional[FilePath] = None,
        server_name: Optional[str] = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        # First: a configuration error raises before anything is opened.
        self._security = channel_security(
            credentials=credentials, token=token, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, server_name=server_name)
        self.address = address or default_address()
        self.timeout = timeout
        self.retries = max(0, retries)
        self.retry_backoff = retry_backoff
        self._metadata: Tuple[Tuple[str, str], ...] = (
            ((CALLER_METADATA, caller_id),) if caller_id else ()
        )
        self._max_message_bytes = max_message_bytes
        self._pid = os.getpid()
        self._channel = self._new_channel()
        self._stub = pb_grpc.GatewayStub(self._channel)
        #: Channels inherited from the parent process: kept, never used or closed in this one.
        self._inherited: List[grpc.Channel] = []

    def _new_channel(self) -> grpc.Channel:
        # The credentials made at construction (files are not read again, e.g. in a forked child).
        options = channel_options(self._max_message_bytes) + list(self._security.options)
        if self._security.credentials is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, self._security.credentials, options=options)

    def _stub_here(self) -> pb_grpc.GatewayStub:
        """The stub of this process's channel (a forked child opens its own on first use)."""
        if self._pid != os.getpid():
            with _fork_lock:
                if self._pid != os.getpid():
                    self._inherited.append(self._channel)
                    self._channel = self._new_channel()
                    self._stub = pb_grpc.GatewayStub(self._channel)
                    self._pid = os.getpid()
        return self._stub

    def publish(
        self,
        topic: str,
        value: BytesLike,
        *,
        key: Optional[BytesLike] = None,
        headers: Optional[Headers] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> Delivered:
        """Publishes one message and returns where it landed.

        :raises fjord.PublishError: the gateway did not store it (after ``retries`` resends if
            the failure was retriable).
        :raises fjord.GatewayError: the call failed as a whole.
        """
        message = Message(value, key, headers, timestamp_ms, partition)
        delay = self.retry_backoff
        unknown = False  # an earlier attempt may have stored the message
        for attempt in range(self.retries + 1):
            try:
                (result,) = self.publish_batch(topic, [message])
            except FjordError as e:
                raise (unknown_after_earlier_attempt(e) if unknown else e) from None
            if isinstance(result, Delivered):
                return result
            error = result.to_exception()
            if not result.retriable or attempt == self.retries:
                raise unknown_after_earlier_attempt(error) if unknown else error
            unknown = unknown or error.outcome_unknown
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def publish_batch(
        self, topic: str, messages: Iterable[Union[Message, BytesLike]]
    ) -> List[Result]:
        """Publishes a batch to ``topic``: one :class:`Delivered` or :class:`Failure` per
        message, in order. Messages of one key keep their order while the clusters are healthy.

        :raises fjord.GatewayError: the call failed as a whole (empty batch, limits, no route,
            gateway unreachable after ``retries`` resends).
        """
        request = pb.ProduceBatchRequest(topic=topic, messages=[to_pb(m) for m in messages])
        response, unknown = self._call(request)
        results = [from_pb(r) for r in response.results]
        if unknown:  # an earlier attempt may have stored what this one could not
            results = [dataclasses.replace(r, outcome_unknown=True) if isinstance(r, Failure)
                       else r for r in results]
        return results

    def _call(self, request: pb.ProduceBatchRequest) -> Tuple[pb.ProduceBatchResponse, bool]:
        """The response, and whether an earlier attempt's outcome was unknown."""
        delay = self.retry_backoff
        unknown = False  # an earlier attempt may have stored the batch
        for attempt in range(self.retries + 1):
            try:
                response = self._stub_here().ProduceBatch(
                    request, timeout=self.timeout, metadata=self._metadata
                )
                return response, unknown
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                if not error.retriable or attempt == self.retries:
                    raise (unknown_after_earlier_attempt(error) if unknown else error) from None
                unknown = unknown or error.outcome_unknown
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Closes the connection (this process's: a forked child never closes the parent's)."""
        if self._pid == os.getpid():
            self._channel.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Optional[Publisher] = None
_default_lock = threading.Lock()
#: Taken by a Publisher replacing its channel in a forked child.
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock another thread held at the fork stays held in the child, where that thread does not
    # exist: make them anew. (The shared Publisher itself is kept: it opens its own channel.)
    global _default_lock, _fork_lock, _forked
    _default_lock = threading.Lock()
    _fork_lock = threading.Lock()
    _forked = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def default_publisher() -> Publisher:
    """The process's shared :class:`Publisher` (``$FJORD_GATEWAY_ADDRESS``; TLS and token from
    ``$FJORD_GATEWAY_TOKEN``, ``$FJORD_GATEWAY_CA_FILE``, ... as :mod:`fjord.security` says)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Publisher()
        return _default


def publish(
    topic: str,
    value: BytesLike,
    *,
    key: Optional[BytesLike] = None,
    headers: Optional[Headers] = None,
    partition: Optional[int] = None,
    timestamp_ms: Optional[int] = None,
) -> Delivered:
    """Publishes one message through the default gateway; see :meth:`Publisher.publish`."""
    return default_publisher().publish(
        topic, value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp_ms
    )


def publish_batch(
    topic: str, messages: Sequence[Union[Message, BytesLike]]
) -> List[Result]:
    """Publishes a batch through the default gateway; see :meth:`Publisher.publish_batch`."""
    return default_publisher().publish_batch(topic, messages)

