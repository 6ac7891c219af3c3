"""Object compaction end to end: the broker's compactor merges small flush objects into
per-partition objects while real clients produce and consume.

* Under concurrent produce and consume (an idempotent producer and a consumer group reading
  while the compactor swaps rows behind them), ``tests/checker.py`` finds nothing lost,
  duplicated or out of order; a group reading the compacted partitions from the beginning
  afterwards gets every acknowledged record, in order.
* SIGKILL during a merge (the merged object uploaded, its swap not yet made): after a restart
  every record is there, the merges complete, and the half-done merge's object, which nothing
  references, is deleted by the garbage collector's orphan sweep. The sweep only looks at
  hours of object keys wholly behind its commit watermark (now minus a grace of at least a
  minute), so the restarted broker runs with its clock two hours ahead
  (``--simulated-clock-offset-ms``, a test setting) instead of the test waiting an hour.
"""

from __future__ import annotations

import re
import time
import urllib.request

from confluent_kafka import Producer

from checker import assert_clean
from cluster_workload import Workload
from conftest import free_port
from kafka_helpers import consume_partitions, create_topic, flush_all

COMPACT_FAST = (
    "--compaction-interval-ms", "300",
    "--compaction-min-age-ms", "1500",
    "--compaction-target-bytes", "262144",
    "--compaction-max-row-bytes", "32768",
)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def object_files(data_dir) -> set[str]:
    root = data_dir / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*.fjd")}


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_object_compaction_under_concurrent_produce_and_consume(broker_factory, topic):
    port = free_port()
    broker = broker_factory(*COMPACT_FAST, "--metrics-listen", f"127.0.0.1:{port}")
    compaction_under_load(broker, [broker.bootstrap], port, topic)


def test_object_compaction_in_a_postgres_cluster(broker_factory, topic, postgres_db, tmp_path):
    """Two brokers on one PostgreSQL database; node 1 compacts, clients use both."""
    from kafka_helpers import wait_for_brokers

    shared = ["--coordinator", postgres_db, "--object-store", f"file://{tmp_path / 'objects'}",
              *COMPACT_FAST]
    port = free_port()
    a = broker_factory(*shared, "--node-id", "1", "--metrics-listen", f"127.0.0.1:{port}")
    b = broker_factory(*shared, "--node-id", "2")
    wait_for_brokers(a.bootstrap, {1, 2})
    wait_for_brokers(b.bootstrap, {1, 2})
    compaction_under_load(a, [a.bootstrap, b.bootstrap], port, topic)


def compaction_under_load(broker, bootstraps, port, topic):
    """A producer and a consumer group while ``broker`` (metrics on ``port``) compacts."""
    create_topic(bootstraps[-1], topic, 4)
    work = Workload(bootstraps, topic, f"{topic}-group", rate=1500, consumers=2).start()
    started = time.monotonic()
    # Run until the compactor has swapped a good number of merges in, at least 10 s.
    wait_for("compaction swaps", lambda: metric(port, "fjord_compaction_swaps_total") >= 8
             and time.monotonic() - started > 10, timeout=90)
    outcome = work.finish()
    assert_clean(outcome.report)
    assert outcome.acked > 5000, outcome.describe()
    assert metric(port, "fjord_compaction_errors_total") == 0, broker.logs()
    replaced = metric(port, "fjord_compaction_rows_replaced_total")
    written = metric(port, "fjord_compaction_rows_written_total")
    assert replaced > 5 * written, (replaced, written)

    # Let the tail age and be merged too, then read everything from the beginning.
    before = metric(port, "fjord_compaction_swaps_total")
    wait_for("the tail's compaction",
             lambda: metric(port, "fjord_compaction_swaps_total") > before, timeout=30)
    acked: dict[int, list[tuple[int, bytes]]] = {}
    for a in work.recorder.acks:
        acked.setdefault(a.partition, []).append((a.offset, a.value))
    got = consume_partitions(broker.bootstrap, topic, range(4))
    for p in range(4):
        want = sorted(acked.get(p, []))
        have = [(m.offset(), m.value()) for m in got[p]]
        assert have == want, f"partition {p}: {len(have)} read, {len(want)} acknowledged"


def pause_key(broker) -> str | None:
    """The key of the object a paused merge uploaded, from the broker's log."""
    text = broker.stderr_path.read_text(errors="replace") + broker.stdout_path.read_text(
        errors="replace")
    found = re.findall(r"pausing before the swap.*?object=(\S+?\.fjd)", text)
    if not found:
        found = re.findall(r"object=(\S+?\.fjd).*?pausing before the swap", text)
    return found[0] if found else None


def test_sigkill_during_a_merge_loses_nothing_and_its_object_is_collected(broker_factory, topic):
    pause = ("--compaction-test-pause-before-swap-ms", "600000")
    broker = broker_factory(*COMPACT_FAST, *pause)
    create_topic(broker.bootstrap, topic, 2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "linger.ms": 0})
    values = {0: [], 1: []}
    for n in range(3000):
        p = n % 2
        v = b"v-%d" % n
        producer.produce(topic, partition=p, value=v)
        values[p].append(v)
        if n % 50 == 49:
            flush_all(producer)  # many small flushes: many rows to merge
    flush_all(producer)

    key = wait_for("a merge paused before its swap", lambda: pause_key(broker), timeout=60)
    assert key in object_files(broker.data_dir), (key, sorted(object_files(broker.data_dir))[:5])
    broker.kill()

    # Restart two hours ahead, so that the orphan sweep may look at the paused merge's hour.
    broker.extra_args = [
        *COMPACT_FAST,
        "--simulated-clock-offset-ms", str(2 * 3600 * 1000),
        "--gc-interval-secs", "1",
        "--gc-orphan-sweep-interval-secs", "1",
        "--log-segment-delete-delay-ms", "1000",
    ]
    broker.restart()
    got = consume_partitions(broker.bootstrap, topic, range(2))
    for p in range(2):
        assert [m.value() for m in got[p]] == values[p], f"partition {p}"
        assert [m.offset() for m in got[p]] == list(range(len(values[p])))

    wait_for("the half-done merge's object to be deleted",
             lambda: key not in object_files(broker.data_dir), timeout=60)
    assert "deleting an object that was never committed" in broker.stderr_path.read_text()
    # The merges completed after the restart, and the replaced flush objects went too.
    wait_for("flush objects to be merged and collected",
             lambda: len(object_files(broker.data_dir)) <= 20, timeout=60)
    got = consume_partitions(broker.bootstrap, topic, range(2))
    for p in range(2):
        assert [m.value() for m in got[p]] == values[p], f"partition {p} after compaction"
