"""Bad input never panics or hangs the broker.

Raw sockets send what no well-behaved client would: random frames, a frame
cut off mid-way, absurd or negative lengths, unknown API keys, unsupported
versions, a client that disconnects mid-request.  After each, the broker
must still be running and serve a real client (confluent-kafka).
"""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest
from confluent_kafka import Producer

from kafka_helpers import admin_client

TIMEOUT_S = 5.0


def connect(broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT_S)
    s.settimeout(TIMEOUT_S)
    return s


def closed_by_broker(s: socket.socket) -> bool:
    """True when the broker closes the connection (EOF or reset) within the timeout."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def header(api_key: int, version: int, correlation_id: int = 7) -> bytes:
    client_id = b"bad-input-test"
    return struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id


def frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def assert_serving(broker) -> None:
    assert broker.proc.poll() is None, "the broker process died"
    md = admin_client(broker.bootstrap).list_topics(timeout=10)
    assert 0 in md.brokers
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 10000})
    results = []
    p.produce("bad-input-canary", b"still alive", on_delivery=lambda e, m: results.append(e))
    p.flush(15)
    assert results == [None], f"canary produce failed: {results}"


CASES = {
    "random-frames": lambda rng: b"".join(frame(rng.randbytes(rng.randrange(1, 300))) for _ in range(20)),
    "unknown-api-key": lambda rng: frame(header(4242, 0) + b"\x00" * 16),
    "unsupported-produce-version": lambda rng: frame(header(0, 99) + b"\x00" * 16),
    "negative-length": lambda rng: struct.pack(">i", -5) + b"\x00" * 8,
    "huge-length": lambda rng: struct.pack(">i", 2**31 - 1),
    "header-too-short": lambda rng: frame(b"\x00\x03"),
    "metadata-with-garbage-body": lambda rng: frame(header(3, 9) + rng.randbytes(64)),
    "produce-with-garbage-body": lambda rng: frame(header(0, 9) + rng.randbytes(200)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broker_survives_bad_frames(broker, case):
    rng = random.Random(case)
    s = connect(broker)
    try:
        s.sendall(CASES[case](rng))
        assert closed_by_broker(s), f"{case}: the broker neither answered nor closed the connection"
    finally:
        s.close()
    assert_serving(broker)


def test_disconnect_mid_request(broker):
    for cut in (1, 3, 10, 500):
        s = connect(broker)
        body = header(0, 9) + os.urandom(1000)
        s.sendall(frame(body)[:cut])
        s.close()
    assert_serving(broker)


def test_api_versions_from_the_future_gets_v0_error(broker):
    s = connect(broker)
    try:
        s.sendall(frame(header(18, 99, correlation_id=1234)))
        raw = b""
        while len(raw) < 4:
            raw += s.recv(4 - len(raw))
        (size,) = struct.unpack(">i", raw)
        body = b""
        while len(body) < size:
            chunk = s.recv(size - len(body))
            assert chunk, "connection closed mid-response"
            body += chunk
        correlation_id, error_code = struct.unpack(">ih", body[:6])
        assert correlation_id == 1234
        assert error_code == 35  # UNSUPPORTED_VERSION
        (n_apis,) = struct.unpack(">i", body[6:10])
        assert n_apis > 5
    finally:
        s.close()
    assert_serving(broker)
