"""End-to-end tests of ``fjord forward``: a real ``fjord serve``, a real forwarder process and a
handler process built on the Python receiving side (``fjord.serve``); the throughput test runs
the benchmark suite's ``forward`` scenario instead, whose handler is in Rust.

See forward_helpers.py for the handler's behaviours and the process wrappers.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from checker import Recorder
from forward_helpers import (
    FAST_GROUP,
    Behaviour,
    Forwarder,
    HandlerProcess,
    committed,
    headers_of,
    produce,
    read_topic,
    render_config,
    wait_until,
)
from conftest import REPO_ROOT, free_port
from kafka_helpers import create_topic

BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "0")


def subscription(topic: str, endpoint: str, **overrides) -> dict:
    sub = {
        "name": "test",
        "clusters": ["a"],
        "topics": [topic],
        "group_id": f"fw-{topic}",
        "endpoint": endpoint,
        "dead_letter_topic": f"{topic}.dlq",
        "commit_interval_ms": 200,
        "consumer_properties": dict(FAST_GROUP),
    }
    sub.update(overrides)
    return sub


def start_forwarder(procs, fjord_bin, tmp_path, clusters: dict, subs: list[dict],
                    name: str = "forwarder") -> Forwarder:
    port = free_port()
    fw = Forwarder(fjord_bin, tmp_path, port, render_config(port, clusters, subs), name=name)
    procs.append(fw)
    return fw.start()


def acked_values(handler: HandlerProcess) -> Counter:
    return Counter(e["v"] for e in handler.events() if e["r"] == "ack")


def test_forward_chaos_every_record_acked_or_dead_lettered(
        broker_factory, topic, fjord_bin, tmp_path, procs):
    """10% of records fail their first attempt, 1% are dead-lettered by the handler, 5% are
    slow: every record is acknowledged or in the dead-letter topic, and the committed offsets
    never pass a record the handler has not finished."""
    broker = broker_factory(*BROKER_ARGS)
    partitions, n = 4, 2000
    create_topic(broker.bootstrap, topic, partitions)
    behaviour = Behaviour(fail_first=0.10, dead_letter=0.01, slow=0.05, slow_ms=300)
    handler = HandlerProcess(tmp_path, free_port(), behaviour).start()
    procs.append(handler)
    sub = subscription(topic, handler.endpoint, ordering="none", concurrency=50,
                       retry={"initial_backoff_ms": 50, "max_attempts": 4})
    fw = start_forwarder(procs, fjord_bin, tmp_path, {"a": broker.bootstrap}, [sub])

    values = [(f"k{i % 37}".encode(), f"chaos-{i}".encode()) for i in range(n)]
    rec = Recorder()
    violations: list[str] = []
    stop = threading.Event()

    def watch_commits() -> None:
        """Committed offset C of a partition: every record below C must be finished."""
        while not stop.is_set():
            offsets = committed(broker.bootstrap, sub["group_id"], topic, list(range(partitions)))
            finished = {(e["p"], e["o"]) for e in handler.events() if e["r"] in ("ack", "dead")}
            for ack in rec.acks:
                c = offsets.get(ack.partition)
                if c is not None and ack.offset < c and (ack.partition, ack.offset) not in finished:
                    violations.append(f"p{ack.partition}: committed {c} passes unfinished "
                                      f"offset {ack.offset}")
            time.sleep(0.3)

    watcher = threading.Thread(target=watch_commits, daemon=True)
    watcher.start()
    produce(broker.bootstrap, topic, values, rec, rate=1500)
    assert len(rec.acks) == n and not rec.failed

    dead_planned = {v.decode() for _, v in values if behaviour.plan(v) == "dead_letter"}
    ok_values = {v.decode() for _, v in values} - dead_planned
    wait_until(lambda: ok_values <= set(acked_values(handler)), 90,
               lambda: f"{len(ok_values - set(acked_values(handler)))} records not acked")
    # Give the last commits a moment, then stop watching.
    time.sleep(1)
    stop.set()
    watcher.join(10)
    assert not violations, violations[:10]

    # Every dead-lettered record is in the dead-letter topic, with headers naming its origin.
    dlq = wait_until(lambda: (lambda ms: ms if len(ms) >= len(dead_planned) else None)(
        read_topic(broker.bootstrap, f"{topic}.dlq")), 30, "dead-letter records")
    by_value = {m.value().decode(): m for m in dlq}
    assert set(by_value) == dead_planned
    acks_by_value = {a.value.decode(): a for a in rec.acks}
    for value, m in by_value.items():
        h = headers_of(m)
        a = acks_by_value[value]
        assert h["fjord.original.topic"] == topic.encode()
        assert int(h["fjord.original.partition"]) == a.partition
        assert int(h["fjord.original.offset"]) == a.offset
        assert int(h["fjord.attempts"]) == 1
        assert b"unacceptable" in h["fjord.error"]
        assert m.key() == a.key

    # Nothing lost: every produced record was delivered; the first-attempt failures were retried.
    events = handler.events()
    delivered = {e["v"] for e in events}
    assert delivered == {v.decode() for _, v in values}
    firsts = [e for e in events if e["a"] == 1 and e["r"] == "retry"]
    assert len(firsts) >= n * 0.05, "the handler's failures did not happen"
    # Finally, the group committed everything.
    wait_until(lambda: committed(broker.bootstrap, sub["group_id"], topic, list(range(partitions)))
               == {p: sum(1 for a in rec.acks if a.partition == p) for p in range(partitions)},
               15, "final commit")
    m = fw.metrics()
    total = lambda prefix: sum(v for k, v in m.items() if k.startswith(prefix))  # noqa: E731
    assert total("fjord_forwarder_acked_total") >= len(ok_values)
    assert total("fjord_forwarder_dead_lettered_total") == len(dead_planned)
    assert total("fjord_forwarder_retried_total") >= len(firsts)
    assert total("fjord_forwarder_handler_latency_seconds_count") >= n
    fw.stop()


def test_forward_sigkill_mid_stream_delivers_everything_at_least_once(
        broker_factory, topic, fjord_bin, tmp_path, procs, record_property):
    """SIGKILL the forwarder while records stream in, restart it: every record is delivered at
    least once; the duplicates are reported."""
    broker = broker_factory(*BROKER_ARGS)
    partitions, n = 3, 3000
    create_topic(broker.bootstrap, topic, partitions)
    handler = HandlerProcess(tmp_path, free_port(), Behaviour(sleep_ms=2, use_async=True)).start()
    procs.append(handler)
    props = dict(FAST_GROUP, **{"group.instance.id": "fw-crash-test"})
    sub = subscription(topic, handler.endpoint, ordering="key", concurrency=40,
                       commit_interval_ms=500, consumer_properties=props)
    fw = start_forwarder(procs, fjord_bin, tmp_path, {"a": broker.bootstrap}, [sub])

    values = [(f"key-{i % 50}".encode(), f"crash-{i}".encode()) for i in range(n)]
    rec = Recorder()
    producer = threading.Thread(target=produce, args=(broker.bootstrap, topic, values, rec),
                                kwargs={"rate": 1000})
    producer.start()
    wait_until(lambda: len(acked_values(handler)) >= n // 3, 60, "a third delivered")
    fw.kill()
    killed_at = len(acked_values(handler))
    time.sleep(0.5)
    fw.start()
    producer.join(60)
    assert len(rec.acks) == n and not rec.failed

    want = {v.decode() for _, v in values}
    wait_until(lambda: want <= set(acked_values(handler)), 90,
               lambda: f"{len(want - set(acked_values(handler)))} records never delivered")
    acked = acked_values(handler)
    duplicates = sum(c - 1 for c in acked.values() if c > 1)
    record_property("delivered_before_kill", killed_at)
    record_property("duplicates_after_sigkill", duplicates)
    print(f"SIGKILL after {killed_at} deliveries: {duplicates} duplicate deliveries of {n} records")
    # At-least-once, and redelivery is bounded by what was uncommitted at the kill.
    assert set(acked) == want
    assert duplicates < n // 2
    fw.stop()


def test_forward_key_ordering_holds_with_concurrency_100(
        broker_factory, topic, fjord_bin, tmp_path, procs):
    """ordering = "key", concurrency 100: per key, deliveries never overlap and follow offset
    order, while different keys are delivered in parallel."""
    broker = broker_factory(*BROKER_ARGS)
    partitions, n, keys = 2, 3000, 60
    create_topic(broker.bootstrap, topic, partitions)
    handler = HandlerProcess(tmp_path, free_port(),
                             Behaviour(jitter_ms=6, fail_first=0.05, use_async=True)).start()
    procs.append(handler)
    sub = subscription(topic, handler.endpoint, ordering="key", concurrency=100,
                       retry={"initial_backoff_ms": 20})
    fw = start_forwarder(procs, fjord_bin, tmp_path, {"a": broker.bootstrap}, [sub])
    values = [(f"key-{i % keys}".encode(), f"ord-{i}".encode()) for i in range(n)]
    rec = Recorder()
    produce(broker.bootstrap, topic, values, rec)
    want = {v.decode() for _, v in values}
    wait_until(lambda: want <= set(acked_values(handler)), 60, "all delivered")

    events = sorted(handler.events(), key=lambda e: e["s"])
    by_key: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_key[e["k"]].append(e)
    for key, evs in by_key.items():
        acked_offsets = [e["o"] for e in evs if e["r"] == "ack"]
        assert acked_offsets == sorted(acked_offsets), f"{key}: acked out of offset order"
        started_offsets = [e["o"] for e in evs]
        assert started_offsets == sorted(started_offsets), f"{key}: started out of order"
        for a, b in zip(evs, evs[1:]):
            assert b["s"] >= a["e"] - 0.002, f"{key}: offsets {a['o']} and {b['o']} overlap"
    # Different keys did run in parallel.
    edges = sorted([(e["s"], 1) for e in events] + [(e["e"], -1) for e in events])
    level = peak = 0
    for _, d in edges:
        level += d
        peak = max(peak, level)
    assert peak >= 10, f"at most {peak} deliveries overlapped"
    fw.stop()


@pytest.mark.timeout(150)
def test_forward_parallelism_far_beyond_partitions(fjord_bin, record_property):
    """One partition, a handler taking 20 ms per record, concurrency 200, ordering none: far
    beyond a partition-serial consumer's 50 records/s. The issue's bar, 5,000 records/s, is
    asserted.

    Measured with the benchmark suite's ``forward`` scenario (crates/fjord-bench/src/forward.rs,
    also ``bench/run forward``): its own broker and ``fjord forward`` process, 20,000 records, and
    a small Rust gRPC handler (tonic, in the bench process) that sleeps 20 ms and acknowledges.
    The figure is then the forwarder's: a Python gRPC server (``fjord.serve``) spends ~250 us of
    CPU per call, about one core at 4,000 calls/s, which capped this measurement at ~3,500/s on a
    2-core machine even with two handler replicas. The Python receiving side is covered by the
    other tests here. The scenario fails if any record is not delivered within its timeout;
    duplicates are reported. ``max_pending_records_per_partition`` is 20,000: pausing a partition
    drops librdkafka's prefetched records and a resumed partition waits for the fetch in flight
    (up to 500 ms), so the limit must hold well over half a second of deliveries."""
    bench = Path(os.environ.get("FJORD_BENCH_BIN",
                                REPO_ROOT / "target" / "release" / "fjord-bench"))
    assert bench.exists(), f"{bench} missing: cargo build --release -p fjord-bench"
    n = 20000
    args = [str(bench), "--fjord", str(fjord_bin), "--json", "forward", "--partitions", "1",
            "--records", str(n), "--handler-delay-ms", "20", "--concurrency", "200",
            "--ordering", "none", "--max-pending-records", "20000"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=140)
    assert out.returncode == 0, out.stderr[-5000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["scenario"] == "forward", out.stdout
    v = rows[0]["values"]
    rate = v["records_per_second"]
    for name in ("records_per_second", "duplicates", "redeliveries",
                 "forwarder_cpu_us_per_record"):
        record_property(name, round(v[name], 1))
    print(f"1 partition, 20 ms handler, concurrency 200: {rate:.0f} records/s; "
          f"{v['duplicates']:.0f} duplicates, {v['redeliveries']:.0f} redeliveries; forwarder "
          f"{v['forwarder_cpu_us_per_record']:.0f} us CPU per record")
    # n records plus the scenario's warm-up record; every one delivered (no loss).
    assert v["records"] == n + 1, rows[0]
    assert v["calls"] - v["duplicates"] == v["records"], rows[0]
    assert rate >= 5000, f"{rate:.0f} records/s: {rows[0]['figures']}"


def test_forward_retry_topic_and_poison_records(
        broker_factory, topic, fjord_bin, tmp_path, procs):
    """Records whose handler asks for a long delay go through the retry topic and come back
    when due; poison records use up their attempts (in memory, then a round through the retry
    topic) and end in the dead-letter topic without stalling their partition."""
    broker = broker_factory(*BROKER_ARGS)
    n = 400
    create_topic(broker.bootstrap, topic, 1)
    behaviour = Behaviour(always_fail=0.02, retry_after=0.05, retry_after_s=2.0)
    handler = HandlerProcess(tmp_path, free_port(), behaviour).start()
    procs.append(handler)
    sub = subscription(topic, handler.endpoint, ordering="partition", concurrency=20,
                       retry_topic=f"{topic}.retry",
                       retry={"max_attempts": 2, "initial_backoff_ms": 20,
                              "max_in_memory_delay_ms": 1000, "retry_topic_delay_ms": 300,
                              "retry_topic_rounds": 1})
    fw = start_forwarder(procs, fjord_bin, tmp_path, {"a": broker.bootstrap}, [sub])
    values = [(f"k{i}".encode(), f"rt-{i}".encode()) for i in range(n)]
    rec = Recorder()
    produce(broker.bootstrap, topic, values, rec)
    plan = {v.decode(): behaviour.plan(v) for _, v in values}
    poison = {v for v, p in plan.items() if p == "always_fail"}
    later = {v for v, p in plan.items() if p == "retry_after"}
    assert poison and later
    ok = set(plan) - poison
    wait_until(lambda: ok <= set(acked_values(handler)), 60,
               lambda: f"{len(ok - set(acked_values(handler)))} not acked")
    dlq = wait_until(lambda: (lambda ms: ms if len(ms) >= len(poison) else None)(
        read_topic(broker.bootstrap, f"{topic}.dlq")), 30, "poison records dead-lettered")
    assert {m.value().decode() for m in dlq} == poison
    acks = {a.value.decode(): a for a in rec.acks}
    for m in dlq:
        h = headers_of(m)
        a = acks[m.value().decode()]
        assert int(h["fjord.original.offset"]) == a.offset
        assert int(h["fjord.original.partition"]) == a.partition
        assert h["fjord.original.topic"] == topic.encode()
        assert int(h["fjord.attempts"]) == 4, "2 attempts in memory, 2 after the retry topic"
        assert b"poison" in h["fjord.error"]

    events = handler.events()
    attempts = defaultdict(list)
    for e in events:
        attempts[e["v"]].append(e)
    for v in poison:
        assert [e["a"] for e in attempts[v]] == [1, 2, 3, 4], v
        assert all(e["o"] == acks[v].offset and e["t"] == topic for e in attempts[v])
    for v in later:
        first, second = attempts[v][0], attempts[v][-1]
        assert [e["a"] for e in attempts[v]] == [1, 2], v
        assert second["s"] - first["e"] >= 1.9, f"{v} redelivered before it was due"
        assert second["t"] == topic and second["o"] == acks[v].offset
    # The partition was not stalled by poison records or long retries: ordinary records after
    # them were acknowledged long before the retried ones came back.
    last_ok = max(e["e"] for e in events if e["v"] in ok - later and e["r"] == "ack")
    last_later = max(attempts[v][-1]["s"] for v in later)
    assert last_ok < last_later
    fw.stop()
