"""Client quotas end to end (KIP-13/KIP-55/KIP-546).

A SASL broker (see ``test_sasl.py``) with two SCRAM users. A ``producer_byte_rate``
quota is set for one of them with AlterClientQuotas and read back with
DescribeClientQuotas. Neither confluent-kafka's nor kafka-python's AdminClient
has AlterClientQuotas, so both APIs are spoken raw (v0) over the PLAINTEXT
listener (no authorizer: anyone may manage quotas).

Then both users produce as fast as they can at the same time with confluent-kafka:
the limited one's acked byte rate is within 20% of its quota and librdkafka's
statistics show the throttle times the broker reported; the other (held to 10x the
quota by the test itself) is not throttled and goes at least twice as fast.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from confluent_kafka import KafkaError, Producer

from conftest import free_port
from kafka_helpers import create_topic
from test_metrics import scrape
from test_sasl import add_user, pki, sasl_broker, sasl_conf  # noqa: F401  (fixtures)

QUOTA = 200_000  # bytes/s
RUN_S = 8.0

INVALID_REQUEST = 42


# --- a raw Kafka protocol client for AlterClientQuotas (49) and DescribeClientQuotas (48) v0 --


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _nstr(s: str | None) -> bytes:
    return struct.pack(">h", -1) if s is None else _str(s)


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def nstr(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        v = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return v

    def array(self, item) -> list | None:
        n = self.take(">i")
        return None if n < 0 else [item() for _ in range(n)]


def _call(bootstrap: str, api_key: int, body: bytes) -> _Reader:
    host, port = bootstrap.split(":")
    header = struct.pack(">hhi", api_key, 0, 7) + _nstr("quota-admin")
    frame = header + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
    r = _Reader(data[4:])
    assert r.take(">i") == 7  # correlation id
    return r


def alter_quotas(bootstrap: str, entries: list[tuple[dict, dict]],
                 validate_only: bool = False) -> list[tuple[int, str | None]]:
    """``entries``: (entity {type: name or None}, ops {key: value or None to remove}).
    Returns (error code, message) per entry."""
    body = _array([
        _array([_str(t) + _nstr(n) for t, n in entity.items()])
        + _array([_str(k) + struct.pack(">d?", v or 0.0, v is None) for k, v in ops.items()])
        for entity, ops in entries
    ]) + struct.pack(">?", validate_only)
    r = _call(bootstrap, 49, body)
    r.take(">i")  # throttle_time_ms

    def entry():
        code, message = r.take(">h"), r.nstr()
        r.array(lambda: (r.nstr(), r.nstr()))
        return code, message
    return r.array(entry)


def describe_quotas(bootstrap: str, components: list[tuple[str, int, str | None]],
                    strict: bool = False) -> list[tuple[dict, dict]]:
    """``components``: (entity type, match type 0 exact/1 default/2 any, name)."""
    body = _array([_str(t) + struct.pack(">b", m) + _nstr(n) for t, m, n in components])
    body += struct.pack(">?", strict)
    r = _call(bootstrap, 48, body)
    r.take(">i")
    code, message = r.take(">h"), r.nstr()
    assert code == 0, (code, message)

    def entry():
        entity = dict(r.array(lambda: (r.nstr(), r.nstr())))
        values = dict(r.array(lambda: (r.nstr(), r.take(">d"))))
        return entity, values
    return r.array(entry)


# --- the test ---------------------------------------------------------------------------------


class Run:
    """One producer pushing as fast as it can; acked bytes by time, throttles from stats."""

    def __init__(self, conf: dict, topic: str, client_id: str = "app") -> None:
        self.topic = topic
        self.acked: list[tuple[float, int]] = []
        self.errors: list = []
        self.throttle_max = 0
        self.throttle_avg_max = 0
        self.producer = Producer({
            **conf,
            "client.id": client_id,  # by default the same for both users
            "linger.ms": 5,
            "batch.size": 65536,
            "queue.buffering.max.kbytes": 4096,
            "statistics.interval.ms": 500,
            "stats_cb": self.on_stats,
        })

    def on_stats(self, raw: str) -> None:
        for b in json.loads(raw).get("brokers", {}).values():
            t = b.get("throttle", {})
            self.throttle_max = max(self.throttle_max, t.get("max", 0))
            self.throttle_avg_max = max(self.throttle_avg_max, t.get("avg", 0))

    def on_delivery(self, err, msg) -> None:
        if err is not None:
            if err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
                self.errors.append(err)
        else:
            self.acked.append((time.monotonic(), len(msg.value())))

    def run(self, start: float, end: float, cap: float | None = None) -> None:
        """Produces from ``start`` to ``end``, as fast as it can or at most ``cap`` B/s."""
        value = b"x" * 10_000
        produced = 0
        while time.monotonic() < start:
            time.sleep(0.001)
        while (now := time.monotonic()) < end:
            if cap is not None and produced > cap * (now - start) + 1_000_000:
                self.producer.poll(0.005)
                continue
            try:
                self.producer.produce(self.topic, value, on_delivery=self.on_delivery)
                produced += len(value)
            except BufferError:
                self.producer.poll(0.05)
            self.producer.poll(0)
        # Let the statistics of the last throttled responses arrive, then drop the rest.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            self.producer.poll(0.1)
        self.producer.purge()
        self.producer.flush(5)
        self.producer = None  # closes it (its callbacks refer back to this object)

    def rate(self, start: float, end: float) -> float:
        return sum(n for t, n in self.acked if start <= t < end) / (end - start)


def test_producer_byte_rate_quota_throttles_one_user(sasl_broker, pki, topic):
    b = sasl_broker()
    create_topic(b.bootstrap, topic, 1)
    add_user(b, pki, "limited", "limited-pw")
    add_user(b, pki, "free", "free-pw")

    # Refused: an unknown key, a non-positive value, an ip entity; each entity answers for
    # itself and the valid one of the request is stored.
    results = alter_quotas(b.bootstrap, [
        ({"user": "x"}, {"bogus_rate": 1.0}),
        ({"user": "x"}, {"producer_byte_rate": -5.0}),
        ({"ip": "1.2.3.4"}, {"producer_byte_rate": 10.0}),
        ({"user": "other"}, {"consumer_byte_rate": 1e6}),
    ])
    assert [c for c, _ in results] == [INVALID_REQUEST] * 3 + [0], results
    # validate_only stores nothing.
    assert alter_quotas(b.bootstrap, [({"user": "limited"}, {"producer_byte_rate": 1.0})],
                        validate_only=True) == [(0, None)]
    assert describe_quotas(b.bootstrap, [("user", 0, "limited")]) == []

    assert alter_quotas(b.bootstrap, [({"user": "limited"},
                                       {"producer_byte_rate": float(QUOTA)})]) == [(0, None)]
    assert describe_quotas(b.bootstrap, [("user", 0, "limited")]) == [
        ({"user": "limited"}, {"producer_byte_rate": float(QUOTA)})]
    everything = describe_quotas(b.bootstrap, [("user", 2, None)])
    assert sorted(e["user"] for e, _ in everything) == ["limited", "other"]
    # Removing a key that is not set leaves the entity as it is.
    assert alter_quotas(b.bootstrap, [({"user": "other"}, {"producer_byte_rate": None})]) \
        == [(0, None)]
    assert describe_quotas(b.bootstrap, [("user", 0, "other")], strict=True) == [
        ({"user": "other"}, {"consumer_byte_rate": 1e6})]

    limited = Run(sasl_conf(b, pki, "SCRAM-SHA-256", "limited", "limited-pw", tls=False), topic)
    free = Run(sasl_conf(b, pki, "SCRAM-SHA-256", "free", "free-pw", tls=False), topic)
    start = time.monotonic() + 1.0  # both connected and authenticated by then
    end = start + RUN_S
    # The unlimited user is capped at 10x the quota, only to spare the machine.
    threads = [threading.Thread(target=limited.run, args=(start, end)),
               threading.Thread(target=free.run, args=(start, end, 10 * QUOTA))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert limited.errors == [] and free.errors == []

    limited_rate = limited.rate(start, end)
    free_rate = free.rate(start, end)
    print(f"quota {QUOTA} B/s: limited {limited_rate:.0f} B/s "
          f"(throttle max {limited.throttle_max} ms, avg max {limited.throttle_avg_max} ms), "
          f"free {free_rate:.0f} B/s (throttle max {free.throttle_max} ms)")
    assert abs(limited_rate - QUOTA) <= 0.2 * QUOTA, limited_rate
    assert limited.throttle_max > 0
    assert free.throttle_max == 0
    assert free_rate >= 2 * limited_rate, (free_rate, limited_rate)


def test_request_percentage_quota_throttles_one_client(broker_factory, topic):
    """request_percentage (KIP-124): a client id whose produce requests take more than 0.01%
    of a thread's time gets throttle_time_ms in its responses; another client id of the same
    (ANONYMOUS) user, producing the same way, is not throttled."""
    port = free_port()
    b = broker_factory("--metrics-listen", f"127.0.0.1:{port}")
    create_topic(b.bootstrap, topic, 1)
    assert alter_quotas(b.bootstrap, [({"client-id": "busy"},
                                       {"request_percentage": 0.01})]) == [(0, None)]
    assert describe_quotas(b.bootstrap, [("client-id", 0, "busy")]) == [
        ({"client-id": "busy"}, {"request_percentage": 0.01})]
    conf = {"bootstrap.servers": b.bootstrap, "linger.ms": 0}
    busy = Run(conf, topic, client_id="busy")
    idle = Run(conf, topic, client_id="idle")
    start = time.monotonic() + 1.0
    end = start + 4.0
    threads = [threading.Thread(target=busy.run, args=(start, end, 4 * QUOTA)),
               threading.Thread(target=idle.run, args=(start, end, 4 * QUOTA))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert busy.errors == [] and idle.errors == []
    print(f"request_percentage 0.01: busy {busy.rate(start, end):.0f} B/s "
          f"(throttle max {busy.throttle_max} ms), idle {idle.rate(start, end):.0f} B/s "
          f"(throttle max {idle.throttle_max} ms)")
    assert busy.throttle_max > 0
    assert idle.throttle_max == 0
    assert busy.rate(start, end) < idle.rate(start, end)
    metrics = scrape(port)
    assert metrics["fjord_quota_throttled_total"] > 0, metrics
    assert metrics["fjord_quota_reloads_total"] >= 1, metrics
    assert metrics["fjord_quota_reload_errors_total"] == 0, metrics

    # Shutting down does not wait out throttles: with a quota so small that responses are held
    # for the whole window (11 s), the broker still exits within seconds of SIGTERM, answering
    # what it read at once.
    assert alter_quotas(b.bootstrap, [({"client-id": "busy"},
                                       {"request_percentage": 0.0001})]) == [(0, None)]
    time.sleep(1.5)  # every broker reloads quotas within a second
    held = Run(conf, topic, client_id="busy")
    start = time.monotonic()
    producing = threading.Thread(target=held.run, args=(start, start + 3.0))
    producing.start()
    time.sleep(2.0)
    throttled = scrape(port)["fjord_quota_throttled_total"]
    assert throttled > metrics["fjord_quota_throttled_total"], "responses are being held"
    stopping = time.monotonic()
    b.stop(timeout=6)
    assert time.monotonic() - stopping < 6
    producing.join(timeout=30)


CLUSTER_AUTHORIZATION_FAILED = 31


def test_quota_apis_need_cluster_configs_permissions(sasl_broker, pki):
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)
    from test_acls import admin_of, create_acls

    # The PLAINTEXT listener's User:ANONYMOUS is not a super user here.
    b = sasl_broker("--authorizer", "acl", "--super-users", "User:admin")
    alteration = [({"user": "u"}, {"consumer_byte_rate": 1000.0})]
    assert [c for c, _ in alter_quotas(b.bootstrap, alteration)] == \
        [CLUSTER_AUTHORIZATION_FAILED]
    with pytest.raises(AssertionError, match=f"\\({CLUSTER_AUTHORIZATION_FAILED},"):
        describe_quotas(b.bootstrap, [])

    # ALTER_CONFIGS on the cluster allows both (it implies DESCRIBE_CONFIGS).
    create_acls(admin_of(b, pki), AclBinding(
        ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:ANONYMOUS",
        "*", AclOperation.ALTER_CONFIGS, AclPermissionType.ALLOW))
    assert alter_quotas(b.bootstrap, alteration) == [(0, None)]
    assert describe_quotas(b.bootstrap, []) == [({"user": "u"}, {"consumer_byte_rate": 1000.0})]
