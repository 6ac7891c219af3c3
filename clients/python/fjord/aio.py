"""Publishing through the fjord gateway from asyncio, with batching.

::

    async with fjord.AsyncPublisher(linger_ms=5) as pub:
        results = await asyncio.gather(
            *(pub.publish("clicks", f"click {i}", key=f"user-{i % 10}") for i in range(10_000))
        )

Messages are collected per topic for up to ``linger_ms`` (or until ``max_batch_messages`` /
``max_batch_bytes``) and sent as one batch over a single ``ProduceStream`` call, with up to
``max_in_flight`` batches outstanding. The gateway starts the batches of a stream in the order
they were sent, so messages of one key keep the order of the ``publish`` calls.

A batch's life, and what its messages' futures say when ``timeout`` passes:

* queued (collecting, or waiting for an in-flight slot): counted against ``max_queued_messages``
  / ``max_queued_bytes``. When the deadline passes here, the batch is dropped and never written:
  :class:`fjord.GatewayUnavailable` (``DEADLINE_EXCEEDED``), nothing of it was produced. Messages
  whose caller gave up (a cancelled future) are left out when the batch is written.
* sent (handed to the stream): it holds an in-flight slot until it is answered or the stream
  ends. A deadline passing, or the stream ending under it, now means
  :class:`fjord.OutcomeUnknown`: it may have been stored. (A stream that still has not answered
  it ``timeout`` later is cancelled and replaced, failing its other unanswered batches alike.)
  A status with which the gateway refuses a batch (:data:`fjord.errors.REFUSALS`) fails it and
  the batches written after it, which the gateway did not read, as nothing produced.

Fork: an AsyncPublisher belongs to the process (and event loop) that created it. In a forked
child every call raises :class:`fjord.FjordError` at once, and what the parent had queued is never
sent from the child (:meth:`close` there only drops it); create a new one in the child.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from typing import Deque, Dict, List, Optional, Set, Tuple

import grpc
import grpc.aio

from fjord.errors import (
    FjordError,
    GatewayError,
    GatewayUnavailable,
    OutcomeUnknown,
    QueueFull,
    from_rpc_error,
)
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
from fjord.publisher import CALLER_METADATA, channel_options
from fjord.security import FilePath, Token, channel_security

_Pending = Tuple[pb.Message, "asyncio.Future[Result]"]

_QUEUED, _SENT, _DONE = "queued", "sent", "done"


class _Batch:
    """The messages of one topic that go out as one ``ProduceStream`` request (see the module
    docs for its states)."""

    __slots__ = ("topic", "items", "bytes", "deadline", "state", "counted", "timer", "futures",
                 "request_id", "call")

    def __init__(self, topic: str, deadline: float) -> None:
        self.topic = topic
        self.items: List[_Pending] = []
        self.bytes = 0
        self.deadline = deadline
        self.state = _QUEUED
        #: Still counted against the queue bounds.
        self.counted = True
        self.timer: Optional[asyncio.TimerHandle] = None
        #: The futures of the messages written (those not given up by then).
        self.futures: List["asyncio.Future[Result]"] = []
        self.request_id = 0
        self.call: Optional[grpc.aio.StreamStreamCall] = None


class AsyncPublisher:
    """A batching asyncio publisher; create it inside a running event loop.

    :param address: ``host:port`` (default: ``$FJORD_GATEWAY_ADDRESS`` or ``localhost:9095``).
    :param timeout: seconds a message's result may take from :meth:`publish` (or :meth:`send`):
        waiting for room in the queue, for its batch to fill and to be sent, and for the answer.
    :param caller_id: sent as ``x-fjord-caller`` (the gateway's per-caller rate limit).
    :param linger_ms: how long a message may wait for more to fill its batch.
    :param max_batch_messages: / ``max_batch_bytes``: a batch is sent once it is this big.
    :param max_in_flight: batches sent but not answered; further batches wait for a slot.
    :param max_queued_messages: / ``max_queued_bytes``: messages accepted but not yet sent;
        beyond either, :meth:`publish` waits for room and :meth:`send` raises
        :class:`fjord.QueueFull` (a single message larger than ``max_queued_bytes`` is accepted
        when nothing else is queued).
    :param credentials: TLS credentials (``grpc.ssl_channel_credentials(...)``); ``None``:
        plaintext, unless an option below (or its environment variable) asks for TLS.
    :param token: a bearer token, or a function returning one, sent as ``authorization: Bearer
        <token>``; implies TLS (default: ``$FJORD_GATEWAY_TOKEN``). A function is called for
        every ``ProduceStream`` call: a stream keeps the token it was opened with, a new stream
        (after the previous one ended) gets the current one. A refused token fails the batches
        with :class:`fjord.Unauthenticated`, a topic the caller may not use with
        :class:`fjord.PermissionDenied` (nothing of them produced).
    :param ca_file: / ``cert_file`` / ``key_file`` / ``server_name``: as for
        :class:`fjord.Publisher` (defaults ``$FJORD_GATEWAY_CA_FILE``,
        ``$FJORD_GATEWAY_CERT_FILE``, ``$FJORD_GATEWAY_KEY_FILE``); see :mod:`fjord.security`.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        timeout: float = 30.0,
        caller_id: Optional[str] = None,
        linger_ms: float = 5.0,
        max_batch_messages: int = 1000,
        max_batch_bytes: int = 1024 * 1024,
        max_in_flight: int = 32,
        max_queued_messages: int = 100_000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        credentials: Optional[grpc.ChannelCredentials] = None,
        token: Optional[Token] = None,
        ca_file: Optional[FilePath] = None,
        cert_file: Optional[FilePath] = None,
        key_file: Optional[FilePath] = None,
        server_name: Optional[str] = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        security = channel_security(
            credentials=credentials, token=token, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, server_name=server_name)
        self.address = address or default_address()
        self.timeout = timeout
        self.linger = linger_ms / 1000.0
        self.max_batch_messages = max(1, max_batch_messages)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self.max_in_flight = max(1, max_in_flight)
        self.max_queued_messages = max(1, max_queued_messages)
        self.max_queued_bytes = max(1, max_queued_bytes)
        self._metadata = ((CALLER_METADATA, caller_id),) if caller_id else ()
        self._pid = os.getpid()
        opts = channel_options(max_message_bytes) + list(security.options)
        if security.credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(self.address, security.credentials,
                                                    options=opts)
        self._stub = pb_grpc.GatewayStub(self._channel)
        self._ids = itertools.count(1)
        # Queued: collecting per topic, then flushed and waiting for the wire (in order).
        self._open: Dict[str, _Batch] = {}
        self._linger_timers: Dict[str, asyncio.TimerHandle] = {}
        self._ready: Deque[_Batch] = deque()
        self._queued_messages = 0
        self._queued_bytes = 0
        self._room_waiters: List["asyncio.Future[None]"] = []
        # Sent: each holds an in-flight slot until answered or its stream ended.
        self._in_flight: Dict[int, _Batch] = {}
        self._slot_waiter: Optional["asyncio.Future[None]"] = None
        self._writer: Optional["asyncio.Task[None]"] = None
        self._call: Optional[grpc.aio.StreamStreamCall] = None
        self._readers: "Set[asyncio.Task[None]]" = set()
        self._closed = False

    async def publish(
        self,
        topic: str,
        value: BytesLike,
        *,
        key: Optional[BytesLike] = None,
        headers: Optional[Headers] = None,
        partition: Optional[int] = None,
        timestamp_ms: Optional[int] = None,
    ) -> Delivered:
        """Publishes one message (batched with others) and returns where it landed. Waits while
        the queue is full.

        :raises fjord.PublishError: the gateway did not store it.
        :raises fjord.QueueFull: no room in the queue within ``timeout`` (nothing was sent).
        :raises fjord.GatewayError: its batch failed as a whole, or no answer within ``timeout``
            (:class:`fjord.OutcomeUnknown` if it had been sent).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        wire = to_pb(Message(value, key, headers, timestamp_ms, partition))
        size = wire.ByteSize()
        while True:
            self._check_open()
            if self._has_room(size):
                break
            await self._wait_for_room(deadline)
        result = await self._enqueue(topic, wire, size, deadline)
        if isinstance(result, Failure):
            raise result.to_exception()
        return result

    def send(self, topic: str, message: Message) -> "asyncio.Future[Result]":
        """Queues a message; the future yields its :class:`Delivered` or :class:`Failure` (or
        raises :class:`fjord.GatewayError` if its batch failed as a whole).

        :raises fjord.QueueFull: the queue is full (nothing was queued); ``await publish(...)``
            waits for room instead.
        """
        self._check_open()
        wire = to_pb(message)
        size = wire.ByteSize()
        if not self._has_room(size):
            raise QueueFull(
                f"{self._queued_messages} messages ({self._queued_bytes} bytes) queued, the "
                f"limit is {self.max_queued_messages} ({self.max_queued_bytes} bytes): "
                "nothing was queued; await publish() to wait for room"
            )
        return self._enqueue(topic, wire, size, asyncio.get_running_loop().time() + self.timeout)

    async def flush(self) -> None:
        """Sends every queued message and waits for all results."""
        self._check_process()
        waiting = [f for b in self._open.values() for _, f in b.items]
        waiting += [f for b in self._ready for _, f in b.items]
        waiting += [f for b in self._in_flight.values() for f in b.futures]
        for topic in list(self._open):
            self._flush_topic(topic)
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def close(self) -> None:
        """Flushes, then closes the stream and the channel. (In a forked child: only marks it
        closed; nothing the parent had queued is sent.)"""
        if self._pid != os.getpid():
            self._closed = True
            return
        await self.flush()
        self._closed = True
        self._wake_room_waiters()
        call = self._call
        if call is not None and not call.done():
            try:
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass  # it ended meanwhile; its reader fails what it had
        if self._readers:
            await asyncio.gather(*list(self._readers), return_exceptions=True)
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._channel.close()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- the queue

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            raise FjordError(
                f"this AsyncPublisher was created in process {self._pid}; a forked child "
                f"({os.getpid()}) cannot use its channel or event loop: create a new "
                "AsyncPublisher in the child (nothing was sent)")

    def _check_open(self) -> None:
        self._check_process()
        if self._closed:
            raise GatewayError(grpc.StatusCode.CANCELLED, "the publisher is closed")

    def _has_room(self, size: int) -> bool:
        if self._queued_messages == 0:
            return True
        return (self._queued_messages < self.max_queued_messages
                and self._queued_bytes + size <= self.max_queued_bytes)

    async def _wait_for_room(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: "asyncio.Future[None]" = loop.create_future()
        self._room_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, deadline - loop.time())
        except asyncio.TimeoutError:
            raise QueueFull(
                f"the queue stayed full for {self.timeout}s ({self.max_queued_messages} messages"
                f" / {self.max_queued_bytes} bytes): nothing was sent"
            ) from None
        finally:
            if waiter in self._room_waiters:
                self._room_waiters.remove(waiter)

    def _wake_room_waiters(self) -> None:
        # Everyone waiting checks again, in the order they came (simple, and no wake-up is lost).
        waiters, self._room_waiters = self._room_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _enqueue(self, topic: str, wire: pb.Message, size: int,
                 deadline: float) -> "asyncio.Future[Result]":
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Result]" = loop.create_future()
        batch = self._open.get(topic)
        if batch is None:
            batch = self._open[topic] = _Batch(topic, deadline)
            batch.timer = loop.call_at(deadline, self._expire, batch)
            self._linger_timers[topic] = loop.call_later(self.linger, self._flush_topic, topic)
        elif deadline < batch.deadline:
            assert batch.timer is not None
            batch.timer.cancel()
            batch.deadline = deadline
            batch.timer = loop.call_at(deadline, self._expire, batch)
        batch.items.append((wire, future))
        batch.bytes += size
        self._queued_messages += 1
        self._queued_bytes += size
        if len(batch.items) >= self.max_batch_messages or batch.bytes >= self.max_batch_bytes:
            self._flush_topic(topic)
        return future

    def _flush_topic(self, topic: str) -> None:
        timer = self._linger_timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
        batch = self._open.pop(topic, None)
        if batch is None:
            return
        self._ready.append(batch)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _uncount(self, batch: _Batch) -> None:
        """The batch leaves the queue (once): room for others."""
        if batch.counted:
            batch.counted = False
            self._queued_messages -= len(batch.items)
            self._queued_bytes -= batch.bytes
            self._wake_room_waiters()

    def _expire(self, batch: _Batch) -> None:
        if batch.state is _QUEUED:
            self._finish(batch, GatewayUnavailable(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"not sent within {self.timeout}s (waiting for a connection or for one of "
                f"{self.max_in_flight} in-flight slots): nothing of it was produced"))
        elif batch.state is _SENT:
            _fail(batch.futures, OutcomeUnknown(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer within {self.timeout}s; the batch was sent and may have been stored"))
            # Its slot stays held until the answer. The gateway answers in order, within its own
            # delivery timeout: a stream still silent after another timeout is stuck.
            batch.timer = asyncio.get_running_loop().call_later(
                self.timeout, self._cancel_stuck_stream, batch)

    def _cancel_stuck_stream(self, batch: _Batch) -> None:
        if batch.state is _SENT and batch.call is not None and not batch.call.done():
            batch.call.cancel()

    def _finish(self, batch: _Batch, error: Optional[Exception]) -> None:
        """Ends the batch (once): leaves the queue or frees its slot, fails what is still open."""
        if batch.state is _DONE:
            return
        if self._open.get(batch.topic) is batch:
            del self._open[batch.topic]
            timer = self._linger_timers.pop(batch.topic, None)
            if timer is not None:
                timer.cancel()
        futures = batch.futures if batch.state is _SENT else [f for _, f in batch.items]
        batch.state = _DONE
        self._uncount(batch)
        if batch.timer is not None:
            batch.timer.cancel()
        self._in_flight.pop(batch.request_id, None)  # its slot, if it held one
        if self._slot_waiter is not None and not self._slot_waiter.done():
            self._slot_waiter.set_result(None)  # the writer looks again (a slot, or one less)
        if error is not None:
            _fail(futures, error)

    # ----------------------------------------------------------------- the wire

    async def _write_loop(self) -> None:
        """Writes the ready batches, in order, one at a time, each once it has a slot."""
        loop = asyncio.get_running_loop()
        while self._ready:
            batch = self._ready[0]
            if batch.state is not _QUEUED:  # expired while it waited
                self._ready.popleft()
                continue
            if len(self._in_flight) >= self.max_in_flight:
                self._slot_waiter = loop.create_future()
                await self._slot_waiter  # woken whenever a batch ends
                continue
            if not await self._connected(batch):
                continue  # it failed, unsent
            self._ready.popleft()
            await self._write(batch)

    async def _connected(self, batch: _Batch) -> bool:
        """Waits (while the batch is still queued) until the channel is connected. A gateway that
        cannot be reached fails the batch at once, as gRPC fails a call: nothing of it was sent."""
        loop = asyncio.get_running_loop()
        state = self._channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if batch.state is not _QUEUED:
                return False
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                self._finish(batch, GatewayUnavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cannot connect to the gateway at {self.address}: nothing was sent"))
                return False
            try:
                await asyncio.wait_for(self._channel.wait_for_state_change(state),
                                       max(0.0, batch.deadline - loop.time()))
            except asyncio.TimeoutError:
                return False  # the batch expired meanwhile (unsent)
            state = self._channel.get_state(try_to_connect=True)
        return batch.state is _QUEUED

    async def _write(self, batch: _Batch) -> None:
        live = [(m, f) for m, f in batch.items if not f.done()]
        if not live:  # every caller gave up: nothing to send
            self._finish(batch, None)
            return
        try:
            call = self._stream()
        except Exception as e:  # noqa: BLE001 - e.g. the channel was closed
            self._finish(batch, GatewayUnavailable(grpc.StatusCode.UNAVAILABLE, repr(e)))
            return
        self._uncount(batch)
        batch.state = _SENT
        batch.call = call
        batch.request_id = next(self._ids)
        batch.futures = [f for _, f in live]
        self._in_flight[batch.request_id] = batch
        request = pb.ProduceStreamRequest(
            request_id=batch.request_id,
            batch=pb.ProduceBatchRequest(topic=batch.topic, messages=[m for m, _ in live]),
        )
        try:
            await call.write(request)
        except grpc.RpcError as e:  # the stream ended while (or before) the batch went out
            self._finish(batch, from_rpc_error(e, sent=True))
        except asyncio.CancelledError:
            if not call.cancelled():
                raise  # this task itself is cancelled
            self._finish(batch, OutcomeUnknown(
                grpc.StatusCode.CANCELLED, "the stream was cancelled while the batch was written"))
        except Exception as e:  # noqa: BLE001 - e.g. the stream was finished meanwhile
            self._finish(batch, OutcomeUnknown(
                grpc.StatusCode.UNAVAILABLE,
                f"writing the batch failed ({e!r}); it may have been sent and stored"))

    def _stream(self) -> grpc.aio.StreamStreamCall:
        """The open stream, or a new one (never one that has ended)."""
        if self._call is None or self._call.done():
            call = self._stub.ProduceStream(metadata=self._metadata)
            self._call = call
            reader = asyncio.get_running_loop().create_task(self._read(call))
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
        return self._call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        error: Optional[GatewayError] = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                batch = self._in_flight.get(response.request_id)
                if batch is None or batch.call is not call:
                    continue  # not ours: nothing to settle
                for f, r in zip(batch.futures, response.results):
                    if not f.done():
                        f.set_result(from_pb(r))
                missing = None
                if len(response.results) < len(batch.futures):
                    missing = OutcomeUnknown(
                        grpc.StatusCode.UNKNOWN, "the gateway answered fewer results than sent")
                self._finish(batch, missing)
        except grpc.RpcError as e:
            error = from_rpc_error(e, sent=True)
        except asyncio.CancelledError:
            if not call.cancelled():
                raise  # this task itself is cancelled; still settle the batches below
            error = OutcomeUnknown(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the stream gave no answer for {2 * self.timeout}s and was cancelled")
        finally:
            if self._call is call:
                self._call = None
            # Batches written but not answered: the stream ended under them.
            error = error or OutcomeUnknown(
                grpc.StatusCode.UNAVAILABLE, "the stream ended before the batch was answered")
            for batch in [b for b in self._in_flight.values() if b.call is call]:
                self._finish(batch, error)


def _fail(futures: List["asyncio.Future[Result]"], error: Exception) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(error)
