"""Migration drill (issue 7): move a live topic from cluster A to cluster B while a consumer
service keeps receiving every record.

The setup is the one the docs describe for moving a topic with zero downtime:

* two Fjord clusters ``a`` and ``b`` (one broker each), the topic created on both;
* ``fjord gateway`` with one group ``main = {a = 100, b = 0}`` that the topic routes to;
* ``fjord forward`` with one subscription reading the topic from *both* clusters
  (``clusters = ["a", "b"]``) and pushing every record to a Python handler (``fjord.serve``,
  run as :class:`forward_helpers.HandlerProcess`) that acknowledges everything and logs each
  delivery with its source cluster.

A publisher thread publishes steadily through the gateway (keyed and unkeyed messages) and
records what the gateway answered for every message: the cluster, partition and offset it
landed on, or a failure. Mid-stream the weights shift to ``a = 50, b = 50`` (rewrite + SIGHUP)
and then to ``a = 0, b = 100`` (rewrite, noticed by the file watch); publishing goes on for a
while on B only, then stops.

What the drill shows:

* nothing is lost: every message the gateway acknowledged reaches the handler, from the cluster
  and at the partition/offset the gateway reported (checked with :mod:`checker` per cluster,
  also against what is stored on each cluster); duplicate deliveries are counted and printed;
* the gateway reported no failure;
* the traffic really moved: batches finished before the first reload landed on A only, batches
  between the reloads on A and B, batches started after the last reload on B only;
* the handler received records whose source cluster is A and records from B.

Which batch belongs to which phase is decided from wall-clock windows, not from a flag the
publisher reads: a batch that *ended* before a reload started saw the old weights; a batch that
*started* after the reload was applied (the gateway's reload counter moved, which it does after
swapping its routing snapshot) saw the new ones; batches overlapping a reload may see either.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import fjord
import pytest

from checker import Ack, Read, check
from conftest import free_port
from forward_helpers import (
    FAST_GROUP,
    Behaviour,
    Forwarder,
    HandlerProcess,
    render_config,
    wait_until,
)
from gateway_helpers import gateway_factory, read_cluster  # noqa: F401  (fixture)
from kafka_helpers import create_topic

BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "0")
PARTITIONS = 4
#: Messages per second the publisher aims at, and messages per gateway call.
RATE = 2000
BATCH = 40
#: Share of messages with a key (the rest are unkeyed), and how many distinct keys.
KEYED_SHARE = 0.7
KEYS = 50
#: Seconds of publishing in each phase: A only, A and B, B only.
PHASE_SECONDS = (2.5, 2.5, 3.0)
#: Bound on the wait for the handler to have received everything after publishing stopped.
DRAIN_TIMEOUT_S = 45.0


@dataclass
class Batch:
    """One gateway call of the publisher: when it ran and what the gateway answered."""

    started: float
    ended: float
    #: ``(message, result)`` pairs; the result is a ``fjord.Delivered`` or ``fjord.Failure``.
    results: list = field(default_factory=list)


@dataclass
class PublishLog:
    batches: list[Batch] = field(default_factory=list)
    #: every value handed to the gateway (also of calls that raised)
    attempted: list[bytes] = field(default_factory=list)
    #: calls that failed as a whole: ``(values, exception)``
    errors: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def publish_steadily(address: str, topic: str, stop: threading.Event, log: PublishLog) -> None:
    """Publishes batches of :data:`BATCH` messages at about :data:`RATE` messages/s until
    ``stop`` is set. Values are ``<key or ->:<seq>`` (unique); ``KEYED_SHARE`` of them keyed."""
    rng = random.Random(7)
    seq = 0
    interval = BATCH / RATE
    # retries=0: a resent call could store a message twice and blur the duplicate count.
    with fjord.Publisher(address, timeout=15.0, retries=0) as pub:
        next_at = time.monotonic()
        while not stop.is_set():
            msgs = []
            for _ in range(BATCH):
                if rng.random() < KEYED_SHARE:
                    key = f"key-{rng.randrange(KEYS)}"
                    msgs.append(fjord.Message(f"{key}:{seq}".encode(), key=key.encode()))
                else:
                    msgs.append(fjord.Message(f"-:{seq}".encode()))
                seq += 1
            with log.lock:
                log.attempted += [m.value for m in msgs]
            started = time.monotonic()
            try:
                results = pub.publish_batch(topic, msgs)
            except Exception as e:  # a call that failed as a whole: stop and report it
                with log.lock:
                    log.errors.append(([m.value for m in msgs], e))
                return
            batch = Batch(started, time.monotonic(), list(zip(msgs, results)))
            with log.lock:
                log.batches.append(batch)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up


@pytest.mark.timeout(180)
def test_migration_drill_shift_weight_from_a_to_b_while_forwarding_from_both(
    broker_factory, gateway_factory, topic, fjord_bin, tmp_path, procs, record_property
):
    t0 = time.monotonic()
    a = broker_factory(*BROKER_ARGS, name="cluster-a")
    b = broker_factory(*BROKER_ARGS, name="cluster-b")
    brokers = {"a": a, "b": b}
    for cluster in brokers.values():
        create_topic(cluster.bootstrap, topic, PARTITIONS)

    # The consumer side: a handler that acknowledges everything, fed from both clusters.
    handler = HandlerProcess(tmp_path, free_port(), Behaviour(use_async=True)).start()
    procs.append(handler)
    sub = {
        "name": "migration",
        "clusters": ["a", "b"],
        "topics": [topic],
        "group_id": f"fw-{topic}",
        "endpoint": handler.endpoint,
        "dead_letter_topic": f"{topic}.dlq",
        "ordering": "key",
        "concurrency": 100,
        "commit_interval_ms": 200,
        "consumer_properties": dict(FAST_GROUP),
    }
    fw_port = free_port()
    fw = Forwarder(fjord_bin, tmp_path, fw_port,
                   render_config(fw_port, {n: c.bootstrap for n, c in brokers.items()}, [sub]))
    procs.append(fw)
    fw.start()

    # The producing side: the gateway routes the topic to one group, all weight on A.
    gw = gateway_factory()
    config = dict(
        clusters={n: c.bootstrap for n, c in brokers.items()},
        groups={"main": {"a": 100.0, "b": 0.0}},
        topics={topic: "main"},
        reload_poll_ms=200,
    )
    gw.start(gw.config(**config))

    log = PublishLog()
    stop = threading.Event()
    publisher = threading.Thread(target=publish_steadily, args=(gw.address, topic, stop, log),
                                 daemon=True)
    # (start, applied) of each reload, monotonic seconds.
    reloads: list[tuple[float, float]] = []
    publish_started = time.monotonic()
    publisher.start()
    try:
        time.sleep(PHASE_SECONDS[0])
        config["groups"] = {"main": {"a": 50.0, "b": 50.0}}
        began = time.monotonic()
        gw.reload(gw.config(**config), timeout=20.0)  # SIGHUP
        reloads.append((began, time.monotonic()))
        time.sleep(PHASE_SECONDS[1])
        config["groups"] = {"main": {"a": 0.0, "b": 100.0}}
        began = time.monotonic()
        gw.reload(gw.config(**config), timeout=20.0, sighup=False)  # noticed by the file watch
        reloads.append((began, time.monotonic()))
        time.sleep(PHASE_SECONDS[2])
    finally:
        stop.set()
        publisher.join(30)
    publish_seconds = time.monotonic() - publish_started
    assert not publisher.is_alive(), "the publisher thread did not finish within 30 s"

    # ------------------------------------------------------------ what the gateway answered
    acks: dict[str, list[Ack]] = defaultdict(list)
    failures = []
    for batch in log.batches:
        for m, r in batch.results:
            if isinstance(r, fjord.Delivered):
                acks[r.cluster].append(Ack(topic, r.partition, r.offset, m.key, m.value))
            else:
                failures.append((m.value, r))
    acked = sum(map(len, acks.values()))
    attempted = set(log.attempted)
    assert len(attempted) == len(log.attempted), "values are not unique"
    print(f"\npublished {len(log.attempted)} messages in {len(log.batches)} batches over "
          f"{publish_seconds:.1f}s ({len(log.attempted) / publish_seconds:.0f}/s): "
          f"{acked} acknowledged (a {len(acks['a'])}, b {len(acks['b'])}), "
          f"{len(failures)} failed, {len(log.errors)} calls failed as a whole")
    for value, e in log.errors:
        print(f"call failed as a whole ({len(value)} messages): {e!r}")
    for value, r in failures[:20]:
        print(f"failed: {value!r}: {r}")
    assert not log.errors, f"gateway calls failed: {log.errors[:3]}\n{gw.logs()}"
    assert not failures, f"{len(failures)} messages failed, e.g. {failures[:5]}\n{gw.logs()}"

    # The traffic moved: which clusters the batches of each phase landed on.
    (r1_start, r1_done), (r2_start, r2_done) = reloads
    phases = {"A only": [], "A and B": [], "B only": []}
    for batch in log.batches:
        if batch.ended < r1_start:
            phases["A only"].append(batch)
        elif batch.started > r1_done and batch.ended < r2_start:
            phases["A and B"].append(batch)
        elif batch.started > r2_done:
            phases["B only"].append(batch)
    landed = {}
    for name, batches in phases.items():
        counts = Counter(r.cluster for batch in batches for _, r in batch.results)
        landed[name] = counts
        print(f"phase {name}: {len(batches)} batches, landed {dict(sorted(counts.items()))}")
        assert len(batches) >= 5, f"phase {name}: only {len(batches)} batches"
    print(f"reloads took {r1_done - r1_start:.2f}s (SIGHUP) and {r2_done - r2_start:.2f}s "
          f"(file watch); {len(log.batches) - sum(map(len, phases.values()))} batches "
          "overlapped a reload")
    assert set(landed["A only"]) == {"a"}, landed["A only"]
    assert set(landed["A and B"]) == {"a", "b"}, landed["A and B"]
    assert set(landed["B only"]) == {"b"}, (
        f"after the shift to a = 0, b = 100 messages still landed on A: {landed['B only']}")

    # ------------------------------------------------------------ what the handler received
    want = {(c, x.partition, x.offset, x.value.decode()) for c, xs in acks.items() for x in xs}

    def delivered() -> set:
        return {(e["c"], e["p"], e["o"], e["v"]) for e in handler.events()
                if e["t"] == topic and e["r"] == "ack"}

    drain_started = time.monotonic()

    def missing_report() -> str:
        missing = sorted(want - delivered())
        per_cluster = Counter(m[0] for m in missing)
        return (f"{len(missing)} of {len(want)} acknowledged messages never reached the handler "
                f"(per cluster {dict(per_cluster)}), e.g. {missing[:10]}\n"
                f"forwarder metrics: {lag_metrics()}\n{fw.logs()}")

    def lag_metrics() -> dict:
        try:
            prefixes = ("fjord_forwarder_commit_lag", "fjord_forwarder_committed_offset",
                        "fjord_forwarder_acked_total")
            return {k: v for k, v in fw.metrics().items() if k.startswith(prefixes)}
        except Exception as e:  # the forwarder may be gone: that is in its logs
            return {"error": repr(e)}

    wait_until(lambda: want <= delivered(), DRAIN_TIMEOUT_S, missing_report, interval=0.5)
    drain_seconds = time.monotonic() - drain_started

    events = handler.events()
    assert all(e["r"] == "ack" for e in events), [e for e in events if e["r"] != "ack"][:5]
    assert all(e["t"] == topic for e in events), {e["t"] for e in events}
    by_cluster = Counter(e["c"] for e in events)
    assert set(by_cluster) == {"a", "b"}, f"deliveries by source cluster: {dict(by_cluster)}"

    # Per cluster: every ack delivered from that cluster at the acknowledged position (nothing
    # lost, misplaced or invented, no offset skipped); redeliveries are allowed and counted.
    duplicates = []
    redelivered = 0
    for name in ("a", "b"):
        reads = [Read(topic, e["p"], e["o"], e["k"].encode() if e["k"] is not None else None,
                      e["v"].encode()) for e in events if e["c"] == name]
        report = check(acks[name], reads, attempted=attempted)
        print(f"handler, from cluster {name}: {report.summary()}")
        assert report.ok, f"cluster {name}: {report.summary(10)}\n{fw.logs()}"
        redelivered += report.redelivered
        seen = Counter((e["p"], e["o"]) for e in events if e["c"] == name)
        duplicates += [(name, p, o, n) for (p, o), n in sorted(seen.items()) if n > 1]
    print(f"{len(events)} deliveries of {acked} messages: {redelivered} duplicate deliveries"
          + (f" of {len(duplicates)} positions, e.g. {duplicates[:20]}" if duplicates else ""))

    # The clusters' logs hold exactly what the gateway acknowledged (no record written twice).
    for name, cluster in brokers.items():
        stored = read_cluster(cluster.bootstrap, topic)
        reads = [Read(topic, r.partition, r.offset, r.key, r.value) for r in stored]
        report = check(acks[name], reads, attempted=attempted)
        assert report.ok, f"stored on cluster {name}: {report.summary(10)}"
        assert len(stored) == len(acks[name]), (
            f"cluster {name} stores {len(stored)} records, the gateway acknowledged "
            f"{len(acks[name])} there")

    # Informational: a key that moved clusters may be delivered out of order across the move,
    # since the forwarder reads the clusters independently (see docs/gateway.md, fjord-hlc).
    first_b: dict[str, float] = {}
    last_a: dict[str, float] = {}
    for e in events:
        if e["k"] is None:
            continue
        if e["c"] == "b":
            first_b[e["k"]] = min(first_b.get(e["k"], e["s"]), e["s"])
        else:
            last_a[e["k"]] = max(last_a.get(e["k"], e["s"]), e["s"])
    overlapping = sorted(k for k in first_b.keys() & last_a.keys() if first_b[k] < last_a[k])
    print(f"{len(first_b.keys() & last_a.keys())} keys delivered from both clusters; "
          f"{len(overlapping)} of them had a delivery from B before their last one from A")

    total = time.monotonic() - t0
    record_property("messages", acked)
    record_property("duplicate_deliveries", redelivered)
    record_property("drain_seconds", round(drain_seconds, 2))
    print(f"handler had everything {drain_seconds:.1f}s after publishing stopped; "
          f"test body {total:.1f}s")
    fw.stop()
    gw.stop()
