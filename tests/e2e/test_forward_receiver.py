"""The Python receiving side (``fjord.serve``) on its own: what each way of returning from a
handler answers over gRPC, for sync and async handlers."""

from __future__ import annotations

import grpc
import pytest

import forward_helpers  # noqa: F401 - puts clients/python on sys.path
import fjord.receive as fjord
from fjord.forwarder.v1 import forwarder_pb2 as pb
from fjord.forwarder.v1 import forwarder_pb2_grpc as pb_grpc


def delivery(value: bytes, **kw) -> pb.Delivery:
    d = pb.Delivery(topic="orders", partition=2, offset=41, value=value, timestamp_ms=7,
                    cluster="a", attempt=3, subscription="s", **kw)
    d.headers.add(key="trace", value=b"xyz")
    d.headers.add(key="nil")
    return d


def behaviour(record: fjord.Record) -> None:
    seen.append(record)
    if record.value == b"dead":
        raise fjord.DeadLetter("bad record")
    if record.value == b"later":
        raise fjord.Retry("busy", after=2.5)
    if record.value == b"boom":
        raise ValueError("exploded")


async def async_behaviour(record: fjord.Record) -> None:
    behaviour(record)


seen: list[fjord.Record] = []


@pytest.mark.parametrize("handler", [behaviour, async_behaviour], ids=["sync", "async"])
def test_forward_receiver_outcomes(handler):
    seen.clear()
    server = fjord.serve(handler, port=0, block=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RecordHandlerStub(channel)
            ok = stub.Deliver(delivery(b"fine", key=b"k"), timeout=10)
            assert ok.action == pb.ACTION_ACK
            dead = stub.Deliver(delivery(b"dead"), timeout=10)
            assert (dead.action, dead.reason) == (pb.ACTION_DEAD_LETTER, "bad record")
            later = stub.Deliver(delivery(b"later"), timeout=10)
            assert (later.action, later.retry_after_ms, later.reason) == (
                pb.ACTION_RETRY, 2500, "busy")
            boom = stub.Deliver(delivery(b"boom"), timeout=10)
            assert boom.action == pb.ACTION_RETRY and "ValueError: exploded" in boom.reason
    finally:
        server.stop()
    r = seen[0]
    assert (r.topic, r.partition, r.offset, r.key, r.value) == ("orders", 2, 41, b"k", b"fine")
    assert (r.timestamp_ms, r.cluster, r.attempt, r.subscription) == (7, "a", 3, "s")
    assert r.headers == (("trace", b"xyz"), ("nil", None))
    assert r.header("trace") == b"xyz" and r.header("missing") is None
    assert seen[1].key is None, "an absent key stays None, not b''"
