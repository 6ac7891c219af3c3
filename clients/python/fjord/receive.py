"""The receiving side of ``fjord forward``: a gRPC server that calls your handler per record.

::

    import fjord

    def handle(record: fjord.Record) -> None:
        order = json.loads(record.value)
        if "id" not in order:
            raise fjord.DeadLetter("no id")          # never again: to the dead-letter topic
        if not db.available():
            raise fjord.Retry("db down", after=5.0)  # again in >= 5 s
        db.save(order)                               # returning normally acknowledges

    fjord.serve(handle, port=50051)                  # blocks; async handlers work too

Outcomes: returning normally is ACK; raising :class:`Retry` asks for another attempt (after
``after`` seconds if given, else the forwarder's backoff); raising :class:`DeadLetter` sends the
record to the dead-letter topic; any other exception is a retry (its text is kept as the error).
The forwarder bounds attempts, so a record that always raises ends in the dead-letter topic.

Sync handlers run on a thread pool of ``max_concurrency`` threads, by default 100 like the
forwarder's default ``concurrency`` (deliveries in flight per subscription; keep the two equal, or
``max_concurrency`` at the sum over the subscriptions that call this server). Deliveries beyond
the threads wait for a free one; they are never dropped or acknowledged unprocessed, but one
whose deadline (the forwarder's ``delivery_timeout_ms``) passes while it waits is not run: the
forwarder has counted it as failed already and retries it. ``async def`` handlers (and objects
with an ``async def __call__``) run on one event loop (in a thread of its own) with no limit other
than the forwarder's concurrency.

What a call returns decides, not how the handler was declared: when a plain callable returns an
awaitable (a lambda or a sync decorator around an ``async def``), the awaitable is run to its end
on an event loop the server owns (one thread, shared by all such calls, started on first use)
while the calling thread waits, and its result or exception is the outcome as above. A record is
acknowledged only after the awaitable has completed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union

import grpc

from fjord.forwarder.v1 import forwarder_pb2 as pb
from fjord.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

__all__ = ["Record", "Retry", "DeadLetter", "Server", "serve"]

log = logging.getLogger("fjord.receive")


class Retry(Exception):
    """Raise to have the record delivered again (after ``after`` seconds, if given)."""

    def __init__(self, reason: str = "", after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


class DeadLetter(Exception):
    """Raise to send the record to the dead-letter topic with ``reason``; it is not retried."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """One record as delivered. ``topic``/``partition``/``offset`` name its original position
    (also when it comes back from the retry topic); ``attempt`` is 1 on the first delivery."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: tuple[tuple[str, Optional[bytes]], ...]
    timestamp_ms: int
    cluster: str
    attempt: int
    subscription: str

    def header(self, name: str) -> Optional[bytes]:
        """The last value of header ``name`` (``None`` if absent or null)."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


Handler = Callable[[Record], Union[None, Awaitable[None]]]


def _record(d: pb.Delivery) -> Record:
    return Record(
        topic=d.topic,
        partition=d.partition,
        offset=d.offset,
        key=d.key if d.HasField("key") else None,
        value=d.value if d.HasField("value") else None,
        headers=tuple((h.key, h.value if h.HasField("value") else None) for h in d.headers),
        timestamp_ms=d.timestamp_ms,
        cluster=d.cluster,
        attempt=d.attempt,
        subscription=d.subscription,
    )


_ACK = pb.Outcome(action=pb.ACTION_ACK)
_EXPIRED = pb.Outcome(action=pb.ACTION_RETRY, reason="the delivery expired before it was run")


def _outcome(error: BaseException, record: Record) -> pb.Outcome:
    """The outcome of a handler that raised ``error``."""
    if isinstance(error, DeadLetter):
        return pb.Outcome(action=pb.ACTION_DEAD_LETTER, reason=error.reason or "DeadLetter")
    if isinstance(error, Retry):
        after_ms = max(0, round(error.after * 1000)) if error.after is not None else 0
        return pb.Outcome(action=pb.ACTION_RETRY, retry_after_ms=after_ms,
                          reason=error.reason or "Retry")
    log.warning("handler raised on %s/%d@%d (attempt %d): %r", record.topic, record.partition,
                record.offset, record.attempt, error)
    return pb.Outcome(action=pb.ACTION_RETRY, reason=f"{type(error).__name__}: {error}")


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _LoopThread:
    """An event loop in a thread of its own, started on first use: the sync server runs there the
    awaitables a plain-callable handler returns (all on the same loop, so loop-bound resources the
    handler creates keep working from call to call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Runs ``awaitable`` on the loop and returns its result (or raises its exception)."""
        with self._lock:
            if self._closed:
                close = getattr(awaitable, "close", None)
                if close is not None:
                    close()  # no "never awaited" warning: it is not run, and the call fails
                raise RuntimeError("the receiver is stopping")
            if self._loop is None:
                log.info("the handler returned an awaitable: running awaitables on the "
                         "receiver's event loop (pass an async def to serve them without threads)")
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="fjord-receive-loop", daemon=True)
                self._thread.start()
            # Submitted under the lock, so stop() sees it among the tasks it cancels.
            future = asyncio.run_coroutine_threadsafe(_await(awaitable), self._loop)
        return future.result()

    def stop(self) -> None:
        """Cancels what still runs (its callers get an exception, never an ACK) and ends the loop."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(cancel_all()))
        thread.join()
        loop.close()


class _SyncServicer(pb_grpc.RecordHandlerServicer):
    def __init__(self, handler: Handler, loop: _LoopThread) -> None:
        self._handler = handler
        self._loop = loop

    def Deliver(self, request: pb.Delivery, context: Any) -> pb.Outcome:
        record = _record(request)
        if not context.is_active():  # waited for a thread past its deadline: the caller is gone
            return _EXPIRED
        try:
            result = self._handler(record)
            if inspect.isawaitable(result):
                self._loop.run(result)
        except Exception as e:  # noqa: BLE001 - every exception is an outcome
            return _outcome(e, record)
        return _ACK


class _AsyncServicer(pb_grpc.RecordHandlerServicer):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def Deliver(self, request: pb.Delivery, context: Any) -> pb.Outcome:
        record = _record(request)
        try:
            result = self._handler(record)
            if inspect.isawaitable(result):
                await result
        except Exception as e:  # noqa: BLE001
            return _outcome(e, record)
        return _ACK


def _is_async(handler: Handler) -> bool:
    """Whether to serve ``handler`` from an event loop: declared ``async def`` (also through
    ``functools.partial``) or an object with an ``async def __call__``. Any other callable is
    served from threads; what it returns is checked on every call (see the module docs)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))


class Server:
    """A running receiver. ``port`` is the bound port (useful with ``port=0``)."""

    def __init__(self, handler: Handler, host: str, port: int, max_concurrency: int) -> None:
        self._stopped = threading.Event()
        self._grace: Optional[float] = 1.0
        if _is_async(handler):
            self._loop = asyncio.new_event_loop()
            self._ready = threading.Event()
            self._error: Optional[BaseException] = None
            self._thread = threading.Thread(
                target=self._run_async, args=(handler, host, port), name="fjord-receive",
                daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._error is not None:
                raise self._error
        else:
            self._loop = None
            self._awaitables = _LoopThread()
            self._server = grpc.server(futures.ThreadPoolExecutor(
                max_workers=max_concurrency, thread_name_prefix="fjord-receive"))
            pb_grpc.add_RecordHandlerServicer_to_server(_SyncServicer(handler, self._awaitables),
                                                      self._server)
            self.port = self._server.add_insecure_port(f"{host}:{port}")
            self._server.start()

    def _run_async(self, handler: Handler, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        assert self._loop is not None

        async def main() -> None:
            self._aio = grpc.aio.server()
            pb_grpc.add_RecordHandlerServicer_to_server(_AsyncServicer(handler), self._aio)
            self.port = self._aio.add_insecure_port(f"{host}:{port}")
            await self._aio.start()
            self._stop_requested = asyncio.Event()
            self._ready.set()
            await self._stop_requested.wait()
            await self._aio.stop(self._grace)

        try:
            self._loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()
        finally:
            self._stopped.set()

    def stop(self, grace: Optional[float] = 1.0) -> None:
        """Stops accepting calls; calls running get ``grace`` seconds to finish."""
        if self._loop is not None:
            self._grace = grace
            if not self._stopped.is_set():
                self._loop.call_soon_threadsafe(self._stop_requested.set)
            self._thread.join()
        else:
            self._server.stop(grace).wait()
            self._awaitables.stop()
        self._stopped.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until stopped (True) or ``timeout`` seconds passed (False)."""
        if self._loop is None:
            return not self._server.wait_for_termination(timeout)
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


#: The forwarder's default ``concurrency`` (crates/fjord-forwarder/src/config.rs).
DEFAULT_MAX_CONCURRENCY = 100


def serve(handler: Handler, port: int = 50051, *, host: str = "127.0.0.1",
          max_concurrency: int = DEFAULT_MAX_CONCURRENCY, block: bool = True) -> Server:
    """Serves ``fjord.forwarder.v1.RecordHandler`` on ``host:port``, calling ``handler(record)``
    for each delivery (see the module docs for outcomes).

    ``max_concurrency``: threads for a sync handler (deliveries beyond it wait for one; see the
    module docs); match it to the forwarder's ``concurrency``.

    With ``block=True`` (the default) it returns only after :meth:`Server.stop` or Ctrl-C;
    with ``block=False`` it returns the running :class:`Server` at once.
    """
    server = Server(handler, host, port, max_concurrency)
    if block:
        try:
            while not server.wait(0.5):
                pass
        except KeyboardInterrupt:
            server.stop()
    return server
