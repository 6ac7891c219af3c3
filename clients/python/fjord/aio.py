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
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Dict, List, Optional, Tuple

import grpc
import grpc.aio

from fjord.errors import GatewayError, GatewayUnavailable, from_rpc_error
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

_Pending = Tuple[pb.Message, "asyncio.Future[Result]"]


class AsyncPublisher:
    """A batching asyncio publisher; create it inside a running event loop.

    :param address: ``host:port`` (default: ``$FJORD_GATEWAY_ADDRESS`` or ``localhost:9095``).
    :param timeout: seconds a message's result may take from the moment its batch is sent.
    :param caller_id: sent as ``x-fjord-caller`` (the gateway's per-caller rate limit).
    :param linger_ms: how long a message may wait for more to fill its batch.
    :param max_batch_messages: / ``max_batch_bytes``: a batch is sent once it is this big.
    :param max_in_flight: batches sent but not answered; :meth:`publish` waits beyond it.
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
        credentials: Optional[grpc.ChannelCredentials] = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        self.linger = linger_ms / 1000.0
        self.max_batch_messages = max(1, max_batch_messages)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self._metadata = ((CALLER_METADATA, caller_id),) if caller_id else ()
        opts = channel_options(max_message_bytes)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=opts)
        self._stub = pb_grpc.GatewayStub(self._channel)
        self._slots = asyncio.Semaphore(max(1, max_in_flight))
        self._ids = itertools.count(1)
        self._batches: Dict[str, List[_Pending]] = {}
        self._batch_bytes: Dict[str, int] = {}
        self._timers: Dict[str, asyncio.TimerHandle] = {}
        self._inflight: Dict[int, List["asyncio.Future[Result]"]] = {}
        self._call: Optional[grpc.aio.StreamStreamCall] = None
        self._reader: Optional["asyncio.Task[None]"] = None
        self._write_lock = asyncio.Lock()
        self._tasks: "set[asyncio.Task[None]]" = set()
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
        """Publishes one message (batched with others) and returns where it landed.

        :raises fjord.PublishError: the gateway did not store it.
        :raises fjord.GatewayError: its batch failed as a whole, or no answer within ``timeout``.
        """
        result = await self.send(topic, Message(value, key, headers, timestamp_ms, partition))
        if isinstance(result, Failure):
            raise result.to_exception()
        return result

    def send(self, topic: str, message: Message) -> "asyncio.Future[Result]":
        """Queues a message; the future yields its :class:`Delivered` or :class:`Failure` (or
        raises :class:`fjord.GatewayError` if its batch failed as a whole)."""
        if self._closed:
            raise GatewayError(grpc.StatusCode.CANCELLED, "the publisher is closed")
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Result]" = loop.create_future()
        wire = to_pb(message)
        batch = self._batches.setdefault(topic, [])
        batch.append((wire, future))
        size = self._batch_bytes.get(topic, 0) + wire.ByteSize()
        self._batch_bytes[topic] = size
        if len(batch) >= self.max_batch_messages or size >= self.max_batch_bytes:
            self._flush_topic(topic)
        elif topic not in self._timers:
            self._timers[topic] = loop.call_later(self.linger, self._flush_topic, topic)
        return future

    async def flush(self) -> None:
        """Sends every queued message and waits for all results."""
        waiting = [f for batch in self._batches.values() for _, f in batch]
        waiting += [f for fs in self._inflight.values() for f in fs]
        for topic in list(self._batches):
            self._flush_topic(topic)
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Flushes, then closes the stream and the channel."""
        await self.flush()
        self._closed = True
        if self._call is not None:
            await self._call.done_writing()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._channel.close()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- internals

    def _flush_topic(self, topic: str) -> None:
        timer = self._timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
        batch = self._batches.pop(topic, None)
        self._batch_bytes.pop(topic, None)
        if not batch:
            return
        # Batches are written in the order they are flushed (the write lock is FIFO).
        task = asyncio.get_running_loop().create_task(self._send_batch(topic, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, topic: str, batch: List[_Pending]) -> None:
        futures = [f for _, f in batch]
        # One timer per batch (not per message): results not in by then fail.
        deadline = asyncio.get_running_loop().call_later(
            self.timeout,
            _fail,
            futures,
            GatewayUnavailable(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no result within {self.timeout}s"
            ),
        )
        futures[-1].add_done_callback(lambda _: deadline.cancel())
        request = pb.ProduceStreamRequest(
            request_id=next(self._ids),
            batch=pb.ProduceBatchRequest(topic=topic, messages=[m for m, _ in batch]),
        )
        async with self._write_lock:
            await self._slots.acquire()
            try:
                call = self._ensure_stream()
                self._inflight[request.request_id] = futures
                await call.write(request)
            except grpc.RpcError as e:
                self._inflight.pop(request.request_id, None)
                self._slots.release()
                _fail(futures, from_rpc_error(e))
            except Exception as e:  # the stream is gone (closed between calls)
                self._inflight.pop(request.request_id, None)
                self._slots.release()
                _fail(futures, GatewayUnavailable(grpc.StatusCode.UNAVAILABLE, str(e)))

    def _ensure_stream(self) -> grpc.aio.StreamStreamCall:
        if self._call is None:
            self._call = self._stub.ProduceStream(metadata=self._metadata)
            self._reader = asyncio.get_running_loop().create_task(self._read(self._call))
        return self._call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        error: Optional[GatewayError] = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                futures = self._inflight.pop(response.request_id, [])
                self._slots.release()
                for f, r in zip(futures, response.results):
                    if not f.done():
                        f.set_result(from_pb(r))
        except grpc.RpcError as e:
            error = from_rpc_error(e)
        finally:
            if self._call is call:
                self._call = None
            # Batches written but not answered: the stream ended under them.
            error = error or GatewayUnavailable(
                grpc.StatusCode.UNAVAILABLE, "the stream ended before the batch was answered"
            )
            for rid in list(self._inflight):
                _fail(self._inflight.pop(rid), error)
                self._slots.release()


def _fail(futures: List["asyncio.Future[Result]"], error: Exception) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(error)
