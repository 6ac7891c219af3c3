"""The Python client (clients/python, package ``fjord``) against in-process fake gRPC peers:
timing-precise cases of the receiving side (``fjord.serve``) and the publishers that need no
broker or gateway process."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Callable, List

import grpc
import pytest

import forward_helpers  # noqa: F401 - puts clients/python on sys.path
import fjord
import fjord.receive
from fjord.forwarder.v1 import forwarder_pb2 as fpb
from fjord.forwarder.v1 import forwarder_pb2_grpc as fpb_grpc


def delivery(value: bytes, offset: int = 0) -> fpb.Delivery:
    return fpb.Delivery(topic="orders", partition=0, offset=offset, value=value, attempt=1)


# --------------------------------------------------------------------------- fjord.serve


async def _process(seen: List[Any], record: fjord.Record, tag: str = "") -> None:
    await asyncio.sleep(0.01)  # really suspends: an unawaited coroutine never gets past here
    seen.append((record.value, asyncio.get_running_loop()))
    if record.value == b"dead":
        raise fjord.DeadLetter("bad record")
    if record.value == b"boom":
        raise ValueError("exploded")


def _sync_decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator written for sync functions (logging, metrics): it returns what fn returns."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class _AsyncCallable:
    def __init__(self, seen: List[Any]) -> None:
        self.seen = seen

    async def __call__(self, record: fjord.Record) -> None:
        await _process(self.seen, record)


HANDLER_SHAPES = {
    "lambda": lambda seen: (lambda record: _process(seen, record)),
    "sync-decorator": lambda seen: _sync_decorator(functools.partial(_process, seen)),
    "partial": lambda seen: functools.partial(_process, seen, tag="x"),
    "async-call-object": lambda seen: _AsyncCallable(seen),
}


@pytest.mark.parametrize("shape", list(HANDLER_SHAPES))
def test_serve_runs_awaitables_returned_by_plain_callables(shape):
    """Item 10: a handler that returns a coroutine without being an ``async def`` (a lambda, a sync
    decorator around one, ...) must have the coroutine run: its outcome is the coroutine's, and
    no record is ACKed unprocessed."""
    seen: List[Any] = []
    server = fjord.serve(HANDLER_SHAPES[shape](seen), port=0, block=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fpb_grpc.RecordHandlerStub(channel)
            ok = stub.Deliver(delivery(b"fine"), timeout=10)
            dead = stub.Deliver(delivery(b"dead"), timeout=10)
            boom = stub.Deliver(delivery(b"boom"), timeout=10)
            again = stub.Deliver(delivery(b"again"), timeout=10)
    finally:
        server.stop()
    assert ok.action == fpb.ACTION_ACK
    assert (dead.action, dead.reason) == (fpb.ACTION_DEAD_LETTER, "bad record")
    assert boom.action == fpb.ACTION_RETRY and "ValueError: exploded" in boom.reason
    assert again.action == fpb.ACTION_ACK
    assert [v for v, _ in seen] == [b"fine", b"dead", b"boom", b"again"], "every record processed"
    loops = {id(loop) for _, loop in seen}
    assert len(loops) == 1, "all awaitables of one server run on the same event loop"


def test_serve_stop_fails_awaitables_still_running():
    """A sync-served awaitable still running at stop is cancelled: its caller gets no ACK and the
    server's threads end (nothing waits forever on a stopped loop)."""
    started = threading.Event()

    async def forever(record: fjord.Record) -> None:
        started.set()
        await asyncio.sleep(3600)

    server = fjord.serve(lambda record: forever(record), port=0, block=False)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = fpb_grpc.RecordHandlerStub(channel).Deliver.future(delivery(b"x"), timeout=30)
        assert started.wait(10)
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.2})
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() returned"
        with pytest.raises(grpc.RpcError) as failed:
            call.result(timeout=10)
        # The forwarder retries either status; what matters is that it is not an ACK.
        assert failed.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
