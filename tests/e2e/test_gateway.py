"""``fjord gateway`` with the Python client (``fjord``), against real Fjord brokers.

The SIGKILL failover test is in test_gateway_failover.py, the 200-process test in
test_gateway_clients.py.
"""

from __future__ import annotations

import asyncio
import filecmp
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import fjord
import grpc
import pytest

from checker import Ack, Read, assert_clean, check
from conftest import REPO_ROOT
from gateway_helpers import assert_seq_order, gateway_factory, read_cluster  # noqa: F401
from kafka_helpers import create_topic


@pytest.fixture
def two_clusters(broker_factory, topic):
    """Two single-broker Fjord clusters, each with ``topic`` (4 partitions)."""
    a = broker_factory(name="cluster-a")
    b = broker_factory(name="cluster-b")
    for cluster in (a, b):
        create_topic(cluster.bootstrap, topic, 4)
    return a, b


def start_gateway(gateway_factory, a, b, weights=(1.0, 1.0), **kwargs):
    gw = gateway_factory()
    config = dict(
        clusters={"a": a.bootstrap, "b": b.bootstrap},
        groups={"main": {"a": weights[0], "b": weights[1]}},
        default_group="main",
    )
    config.update(kwargs)
    gw.start(gw.config(**config))
    return gw, config


def test_one_call_publish_needs_only_the_environment(two_clusters, gateway_factory, topic):
    a, b = two_clusters
    gw, _ = start_gateway(gateway_factory, a, b)
    # A fresh interpreter: nothing configured but FJORD_GATEWAY_ADDRESS.
    code = (
        "import fjord, sys\n"
        f"d = fjord.publish({topic!r}, b'hello', key=b'k1', headers={{'trace': b'abc', 'nil': None}},"
        " timestamp_ms=1700000000000)\n"
        "print(d.cluster, d.partition, d.offset, d.hlc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, FJORD_GATEWAY_ADDRESS=gw.address),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    cluster, partition, offset, hlc = out.stdout.split()
    stored = read_cluster({"a": a, "b": b}[cluster].bootstrap, topic)
    assert len(stored) == 1
    r = stored[0]
    assert (r.partition, r.offset, r.key, r.value) == (int(partition), int(offset), b"k1", b"hello")
    assert r.headers["trace"] == b"abc"
    assert r.headers["nil"] is None
    assert r.headers["fjord-gateway"] == b"gw-e2e"
    assert int(r.headers["fjord-hlc"]) == int(hlc)
    # The HLC is close to the wall clock (physical part in ms).
    assert abs((int(hlc) >> 16) - time.time() * 1000) < 60_000
    # Without the variable the client goes to localhost:9095.
    env_backup = os.environ.pop("FJORD_GATEWAY_ADDRESS", None)
    try:
        assert fjord.messages.default_address() == "localhost:9095"
    finally:
        if env_backup is not None:
            os.environ["FJORD_GATEWAY_ADDRESS"] = env_backup
    gw.stop()


def test_invalid_requests_get_clear_grpc_errors(broker_factory, gateway_factory, topic):
    a = broker_factory(name="cluster-a")
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap},
            groups={"only": {"a": 1.0}},
            topics={topic: "only"},
            sections={"limits": {"max_message_bytes": 1000, "max_messages_per_request": 100}},
        )
    )
    with fjord.Publisher(gw.address, retries=0) as pub:
        with pytest.raises(fjord.InvalidRequest, match="the batch has no messages") as e:
            pub.publish_batch(topic, [])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(fjord.InvalidRequest, match="message 1 has 1001 bytes .* limit is 1000"):
            pub.publish_batch(topic, [b"ok", b"x" * 1001])
        with pytest.raises(fjord.InvalidRequest, match="101 messages in one batch; the limit is 100"):
            pub.publish_batch(topic, [b"m"] * 101)
        with pytest.raises(fjord.NoRoute, match="no route for topic \"unrouted\" and no default route") as e:
            pub.publish("unrouted", b"v")
        assert e.value.code == grpc.StatusCode.NOT_FOUND and not e.value.retriable
        # The gateway is still up and nothing of the refused requests was stored.
        d = pub.publish(topic, b"fine")
        assert d.cluster == "a"
    assert gw.metric("fjord_gateway_requests_total", code="invalid_argument") == 3
    assert gw.metric("fjord_gateway_requests_total", code="not_found") == 1
    assert [r.value for r in read_cluster(a.bootstrap, topic)] == [b"fine"]
    gw.stop()


def test_caller_rate_limit_answers_resource_exhausted(broker_factory, gateway_factory, topic):
    a = broker_factory(name="cluster-a")
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap},
            groups={"only": {"a": 1.0}},
            default_group="only",
            sections={"limits": {"caller_messages_per_sec": 50.0, "caller_burst_messages": 100.0}},
        )
    )
    with fjord.Publisher(gw.address, retries=0, caller_id="greedy") as greedy, fjord.Publisher(
        gw.address, retries=0, caller_id="polite"
    ) as polite:
        assert all(isinstance(r, fjord.Delivered) for r in greedy.publish_batch(topic, [b"m"] * 100))
        with pytest.raises(fjord.Overloaded, match="rate limit of caller \"greedy\"") as e:
            greedy.publish_batch(topic, [b"m"] * 100)
        assert e.value.retriable
        assert isinstance(polite.publish(topic, b"p"), fjord.Delivered)
    assert gw.metric("fjord_gateway_rate_limited_total") == 1
    gw.stop()


@pytest.mark.timeout(120)
def test_weight_shift_moves_a_topic_between_clusters_without_loss(two_clusters, gateway_factory, topic):
    a, b = two_clusters
    gw, config = start_gateway(gateway_factory, a, b, weights=(1.0, 0.0), reload_poll_ms=200)
    acks: dict[str, list[Ack]] = defaultdict(list)
    phase_clusters: dict[int, set] = defaultdict(set)
    phase = [0]
    failures = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            with fjord.Publisher(gw.address) as pub:
                seq = 0
                while not stop.is_set():
                    current = phase[0]
                    msgs = [
                        fjord.Message(f"key-{i % 20}:{seq + i}".encode(), key=f"key-{i % 20}".encode())
                        for i in range(100)
                    ]
                    seq += 100
                    for m, r in zip(msgs, pub.publish_batch(topic, msgs)):
                        if isinstance(r, fjord.Delivered):
                            acks[r.cluster].append(Ack(topic, r.partition, r.offset, m.key, m.value))
                            phase_clusters[current].add(r.cluster)
                        else:
                            failures.append(r)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        # Batches started while a reload is under way (phase -1) may see either weights.
        time.sleep(1.0)
        config["groups"] = {"main": {"a": 1.0, "b": 1.0}}
        phase[0] = -1
        gw.reload(gw.config(**config))  # SIGHUP
        phase[0] = 1
        time.sleep(1.0)
        config["groups"] = {"main": {"a": 0.0, "b": 1.0}}
        phase[0] = -1
        gw.reload(gw.config(**config), sighup=False)  # noticed by the file watch
        phase[0] = 2
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert not failures, failures[:5]
    assert phase_clusters[0] == {"a"}
    assert phase_clusters[1] == {"a", "b"}
    assert phase_clusters[2] == {"b"}
    total = sum(map(len, acks.values()))
    attempted = {x.value for xs in acks.values() for x in xs}
    for name, cluster in (("a", a), ("b", b)):
        records = read_cluster(cluster.bootstrap, topic)
        reads = [Read(topic, r.partition, r.offset, r.key, r.value) for r in records]
        assert_clean(check(acks[name], reads, attempted=attempted))
        assert_seq_order(records, f"cluster {name}")
    print(f"\n{total} messages: a {len(acks['a'])}, b {len(acks['b'])}")
    gw.stop()


def test_async_publisher_batches_over_one_stream(two_clusters, gateway_factory, topic):
    a, b = two_clusters
    gw, _ = start_gateway(gateway_factory, a, b)
    n = 5000

    async def main():
        async with fjord.AsyncPublisher(gw.address, linger_ms=10, max_batch_messages=500) as pub:
            return await asyncio.gather(
                *(pub.publish(topic, f"key-{i % 7}:{i}", key=f"key-{i % 7}") for i in range(n))
            )

    results = asyncio.run(main())
    assert len(results) == n and all(isinstance(r, fjord.Delivered) for r in results)
    batches = gw.metric("fjord_gateway_requests_total", method="ProduceStream", code="ok")
    assert 10 <= batches <= n / 10, f"{batches} batches for {n} messages"
    stored = read_cluster(a.bootstrap, topic) + read_cluster(b.bootstrap, topic)
    assert len(stored) == n
    for name, cluster in (("a", a), ("b", b)):
        assert_seq_order(read_cluster(cluster.bootstrap, topic), f"cluster {name}")
    gw.stop()


def _grpc_raw(address: str, method: str, request: bytes) -> bytes:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        return call(request, timeout=10)


def test_health_and_reflection(broker_factory, gateway_factory):
    a = broker_factory(name="cluster-a")
    gw = gateway_factory()
    gw.start(gw.config(clusters={"a": a.bootstrap}, groups={"g": {"a": 1.0}}, default_group="g"))
    # grpc.health.v1.Health/Check {service: "fjord.gateway.v1.Gateway"} -> {status: SERVING (1)}
    name = b"fjord.gateway.v1.Gateway"
    answer = _grpc_raw(gw.address, "/grpc.health.v1.Health/Check", b"\x0a" + bytes([len(name)]) + name)
    assert answer == b"\x08\x01"
    # grpc.reflection.v1 ServerReflectionInfo {list_services: ""} lists the gateway service.
    with grpc.insecure_channel(gw.address) as ch:
        call = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        (response,) = list(call(iter([b"\x3a\x00"]), timeout=10))
    assert name in response
    gw.stop()


def _health(address: str, service: bytes = b"fjord.gateway.v1.Gateway") -> int:
    """grpc.health.v1.Health/Check for `service`: 1 SERVING, 2 NOT_SERVING."""
    request = b"\x0a" + bytes([len(service)]) + service if service else b""
    answer = _grpc_raw(address, "/grpc.health.v1.Health/Check", request)
    assert answer[:1] == b"\x08", answer
    return answer[1]


def test_health_follows_the_breakers(broker_factory, gateway_factory, topic):
    """With its only cluster down and its breaker open, the gateway reports NOT_SERVING (so a load
    balancer sends callers elsewhere); once the cluster is back and the prober closes the breaker,
    SERVING again."""
    a = broker_factory(name="cluster-a")
    create_topic(a.bootstrap, topic, 1)
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap},
            groups={"g": {"a": 1.0}},
            default_group="g",
            sections={
                "delivery": {"attempt_timeout_ms": 1000, "delivery_timeout_ms": 3000, "max_attempts": 1},
                "breaker": {"consecutive_failures": 2, "open_ms": 500, "probe_timeout_ms": 500,
                            "half_open_successes": 1},
            },
        )
    )
    assert _health(gw.address) == 1 and _health(gw.address, b"") == 1
    a.kill()
    deadline = time.monotonic() + 30
    with fjord.Publisher(gw.address, retries=0, timeout=10) as pub:
        while _health(gw.address) == 1:
            assert time.monotonic() < deadline, "health still SERVING 30 s after the cluster died"
            try:
                pub.publish(topic, b"while-down")
            except fjord.FjordError:
                pass
    assert _health(gw.address, b"") == 2
    assert gw.metric("fjord_gateway_breaker_state", cluster="a") != 0
    a.start()
    deadline = time.monotonic() + 30
    while _health(gw.address) != 1:
        assert time.monotonic() < deadline, "health not SERVING 30 s after the cluster came back"
        time.sleep(0.2)
    assert _health(gw.address, b"") == 1
    with fjord.Publisher(gw.address, retries=0) as pub:
        pub.publish(topic, b"after")
    gw.stop()


def test_checked_in_python_protobuf_code_is_current(tmp_path):
    proto_root = REPO_ROOT / "proto"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(proto_root / "fjord/gateway/v1/gateway.proto"),
        ],
        check=True,
    )
    checked_in = REPO_ROOT / "clients/python/fjord/gateway/v1"
    for f in ("gateway_pb2.py", "gateway_pb2.pyi", "gateway_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "fjord/gateway/v1" / f, checked_in / f, shallow=False), (
            f"{f} is stale: run clients/python/generate.sh"
        )


def test_client_errors_when_no_gateway_answers():
    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with fjord.Publisher(address, timeout=2.0, retries=1, retry_backoff=0.05) as pub:
        with pytest.raises(fjord.GatewayUnavailable) as e:
            pub.publish("t", b"v")
    assert e.value.retriable and e.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 10

    async def main():
        async with fjord.AsyncPublisher(address, timeout=2.0) as pub:
            await pub.publish("t", b"v")

    with pytest.raises(fjord.GatewayUnavailable):
        asyncio.run(main())


def test_topic_missing_on_one_cluster_goes_to_the_other_without_tripping_its_breaker(
    broker_factory, gateway_factory, topic
):
    # Cluster a does not create topics on use and lacks the topic; b has it.
    a = broker_factory("--auto-create-topics", "false", name="cluster-a")
    b = broker_factory(name="cluster-b")
    create_topic(b.bootstrap, topic, 2)
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap, "b": b.bootstrap},
            groups={"main": {"a": 1.0, "b": 1.0}},
            default_group="main",
            sections={"delivery": {"attempt_timeout_ms": 5000, "max_attempts": 2}},
        )
    )
    started = time.monotonic()
    with fjord.Publisher(gw.address) as pub:
        results = pub.publish_batch(
            topic, [fjord.Message(f"v{i}", key=f"k{i}") for i in range(50)]
        )
    assert all(isinstance(r, fjord.Delivered) and r.cluster == "b" for r in results), results[:3]
    assert any(r.attempts == 2 for r in results)  # some keys belong to a
    assert time.monotonic() - started < 5, "the unknown topic was not reported fast"
    assert gw.metric("fjord_gateway_breaker_state", cluster="a") == 0
    assert gw.metric("fjord_gateway_breaker_transitions_total", cluster="a") == 0
    gw.stop()
