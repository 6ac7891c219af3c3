"""Connection limits: the open-file limit, the connection cap, the listen backlog.

``fjord`` raises its soft ``RLIMIT_NOFILE`` to the hard limit at start-up (most
distributions default the soft limit to 1,024), and ``fjord serve`` keeps a
tenth of the limit (at least 256) away from client connections, so that a
broker flooded with connections still opens the object files, directories and
database connections its write path needs.  Clients beyond the cap wait in the
listen queue until a connection closes; that queue holds ``--listen-backlog``
connections (1,024 by default, where std's ``bind`` gives 128), so a storm of
reconnecting clients waits there instead of having its SYNs dropped.
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kafka_helpers import DeliveryTracker, consume_partitions, create_topic, flush_all

TIMEOUT_S = 10.0


@pytest.fixture(autouse=True)
def enough_descriptors_here():
    """This process holds a socket per connection it opens: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if want < 2048:
        pytest.fail(f"the open-file hard limit here is {hard}; these tests need 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def api_versions_request(correlation_id: int) -> bytes:
    client_id = b"open-files-test"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One response frame: (correlation id, rest of the body)."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise AssertionError("the broker closed the connection")
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", exactly(4))
    body = exactly(size)
    return struct.unpack(">i", body[:4])[0], body[4:]


def connect_until_queue_full(port: int, count: int, into: list[socket.socket]) -> None:
    """Open up to ``count`` connections, appended to ``into``; stop at the first whose connect
    times out (the broker's listen queue is full and the kernel drops the SYN)."""
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=3.0)
        except (socket.timeout, TimeoutError):
            return
        into.append(s)


def soft_open_file_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(broker_factory):
    broker = broker_factory(nofile=(256, 4096))
    assert soft_open_file_limit(broker.proc.pid) == 4096

    # 1,000 clients, each answered: at a soft limit of 256 the accept loop would run out of
    # descriptors after about 250 and the rest would wait unanswered.
    sockets = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT_S)
            s.settimeout(TIMEOUT_S)
            sockets.append(s)
            s.sendall(api_versions_request(i))
            correlation, body = read_response(s)
            assert correlation == i
            (error,) = struct.unpack(">h", body[:2])
            assert error == 0, f"ApiVersions on connection {i} answered error {error}"
    finally:
        for s in sockets:
            s.close()


def test_idle_connections_beyond_the_limit_leave_room_for_the_write_path(
    broker_factory, topic
):
    # 512 descriptors: at most 256 client connections, the other 256 kept for the broker.
    broker = broker_factory(nofile=(512, 512))
    create_topic(broker.bootstrap, topic, partitions=4)
    tracker = DeliveryTracker()
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "linger.ms": 5,
            "message.timeout.ms": 30000,
        }
    )
    for i in range(100):
        producer.produce(topic, value=b"before-%d" % i, on_delivery=tracker.callback(i))
    flush_all(producer, timeout=30)

    # Up to 600 idle clients: more than the cap, more than the whole limit. Those beyond the
    # cap wait in the listen queue; once that is full too, connecting times out.
    idle: list[socket.socket] = []
    try:
        connect_until_queue_full(broker.port, 600, idle)
        assert len(idle) > 300, f"only {len(idle)} connections: the cap was never reached"
        time.sleep(1.0)  # the broker accepts up to its cap meanwhile
        assert broker.running, "the broker died under the connection flood"

        # The producer connected before the flood; its records need new object files.
        for i in range(100, 1100):
            producer.produce(topic, value=b"during-%d" % i, on_delivery=tracker.callback(i))
            producer.poll(0)
        flush_all(producer, timeout=40)
        assert tracker.failed == [], f"deliveries failed: {tracker.failed[:5]}"
        assert len(tracker.ok) == 1100
    finally:
        for s in idle:
            s.close()

    # Every acknowledged record reads back (a fresh consumer gets a connection again).
    got = consume_partitions(broker.bootstrap, topic, range(4), timeout=60)
    values = sorted(m.value() for msgs in got.values() for m in msgs)
    want = sorted(
        [b"before-%d" % i for i in range(100)] + [b"during-%d" % i for i in range(100, 1100)]
    )
    assert values == want
    assert "client connections capped" in broker.logs()


def test_clients_beyond_the_cap_wait_in_the_listen_backlog(broker_factory, topic):
    # 10 connections served, 600 more queued: with std's backlog of 128 the kernel would drop
    # the SYNs of all but about 140 and connecting would time out.
    broker = broker_factory("--max-connections", "10", "--listen-backlog", "1024")
    waiting: list[socket.socket] = []
    try:
        connect_until_queue_full(broker.port, 600, waiting)
        assert len(waiting) == 600, f"connection {len(waiting)} timed out: the backlog is full"
        # Each queued client is served once those ahead of it leave: the first ten are being
        # served (answered at once); the 600th is answered after the others close.
        last = waiting[-1]
        last.settimeout(TIMEOUT_S)
        last.sendall(api_versions_request(600))
        for s in waiting[:-1]:
            s.close()
        correlation, body = read_response(last)
        assert correlation == 600 and body[:2] == b"\x00\x00"
    finally:
        for s in waiting:
            s.close()

    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 20000})
    tracker = DeliveryTracker()
    producer.produce(topic, value=b"after the storm", on_delivery=tracker.callback(0))
    flush_all(producer, timeout=30)
    assert tracker.failed == []
