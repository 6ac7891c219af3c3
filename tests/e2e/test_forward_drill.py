"""Drills of ``fjord forward`` under stress (issue 14): a slow endpoint under backpressure while
members of the group join and leave every few seconds, with the eager and the cooperative
protocol; and a dead-letter topic that cannot be written.

Real processes throughout: ``fjord serve``, several ``fjord forward`` members of one group, and
a handler process on the Python receiving side (forward_helpers.py).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from checker import Recorder
from conftest import free_port
from forward_helpers import (
    FAST_GROUP,
    Behaviour,
    Forwarder,
    HandlerProcess,
    committed,
    produce,
    render_config,
    wait_until,
)
from kafka_helpers import create_topic

BROKER_ARGS = ("--group-initial-rebalance-delay-ms", "0")


def _member(procs, fjord_bin, tmp_path, bootstrap: str, sub: dict, name: str) -> Forwarder:
    port = free_port()
    fw = Forwarder(fjord_bin, tmp_path, port, render_config(port, {"a": bootstrap}, [sub]),
                   name=name)
    procs.append(fw)
    return fw


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_forward_drill_slow_endpoint_and_rebalances_deliver_everything(
        strategy, broker_factory, topic, fjord_bin, tmp_path, procs, record_property):
    """The endpoint is slow (every record takes 400 ms more) while 6 partitions hold more
    records than the forwarder may keep pending, so fetching pauses; meanwhile members join and
    leave every 2-3 s. Then the endpoint recovers. Every record must be acknowledged and every
    partition's committed offset must reach its end: a partition left paused by a rebalance
    (issue 14, item 1) never would."""
    broker = broker_factory(*BROKER_ARGS)
    partitions, n = 6, 2400
    create_topic(broker.bootstrap, topic, partitions)
    recovered = tmp_path / "endpoint-recovered"
    behaviour = Behaviour(slow_until_file=str(recovered), slow_until_ms=400)
    handler = HandlerProcess(tmp_path, free_port(), behaviour).start()
    procs.append(handler)
    sub = {
        "name": "drill",
        "clusters": ["a"],
        "topics": [topic],
        "group_id": f"drill-{topic}",
        "endpoint": handler.endpoint,
        "dead_letter_topic": f"{topic}.dlq",
        "commit_interval_ms": 200,
        "ordering": "key",
        "concurrency": 24,
        "max_pending_records_per_partition": 40,
        "consumer_properties": {**FAST_GROUP, "partition.assignment.strategy": strategy},
    }
    values = [(f"k{i % 50}".encode(), f"drill-{i}".encode()) for i in range(n)]
    rec = Recorder()
    produce(broker.bootstrap, topic, values, rec)
    assert len(rec.acks) == n and not rec.failed
    ends = Counter(a.partition for a in rec.acks)

    first = _member(procs, fjord_bin, tmp_path, broker.bootstrap, sub, "member-0").start()
    wait_until(lambda: first.metric("fjord_forwarder_paused") >= 1, 30,
               "no partition paused under backpressure")
    max_paused = 0

    # Members join and leave: each step starts or stops one extra member.
    extras: list[Forwarder] = []
    steps = 0
    churn_until = time.monotonic() + 18
    while time.monotonic() < churn_until:
        if len(extras) < 2 and (steps % 3 != 2):
            fw = _member(procs, fjord_bin, tmp_path, broker.bootstrap, sub,
                         f"member-{steps + 1}").start()
            extras.append(fw)
        elif extras:
            extras.pop(0).stop()
        steps += 1
        for _ in range(5):
            time.sleep(0.5)
            paused = sum(fw.metric("fjord_forwarder_paused") for fw in [first, *extras]
                         if fw.running)
            max_paused = max(max_paused, paused)
    for fw in extras:
        fw.stop()
    assert max_paused >= 2, "the drill did not put the forwarder under backpressure"

    backlog = n - len({e["v"] for e in handler.events() if e["r"] == "ack"})
    assert backlog > 0, "everything was delivered before the endpoint recovered: no backlog"
    recovered.touch()
    t0 = time.monotonic()

    def lag() -> dict[int, int]:
        offsets = committed(broker.bootstrap, sub["group_id"], topic, list(range(partitions)))
        return {p: ends[p] - offsets.get(p, 0) for p in range(partitions)}

    wait_until(lambda: all(v == 0 for v in lag().values()), 120,
               lambda: f"lag per partition stayed {lag()}\n{first.logs()}")
    drained_s = time.monotonic() - t0
    acked = {e["v"] for e in handler.events() if e["r"] == "ack"}
    missing = {v.decode() for _, v in values} - acked
    assert not missing, f"{len(missing)} records never acknowledged, e.g. {sorted(missing)[:5]}"
    assert first.metric("fjord_forwarder_paused") == 0
    record_property("membership_changes", steps)
    record_property("max_paused_partitions", max_paused)
    record_property("backlog_at_recovery", backlog)
    record_property("drain_after_recovery_s", round(drained_s, 1))
    first.stop()


def test_forward_stops_when_the_dead_letter_topic_cannot_be_written(
        broker_factory, topic, fjord_bin, tmp_path, procs):
    """The dead-letter topic does not exist and cannot be created: once ``park_timeout_ms`` has
    passed the forwarder, whose only subscription this is, exits with status 1 and an error
    naming the record and the topic, committed up to the record and not past it (issue 14,
    item 2: it used to retry the write every 5 s forever)."""
    broker = broker_factory(*BROKER_ARGS, "--auto-create-topics", "false")
    create_topic(broker.bootstrap, topic, 1)
    handler = HandlerProcess(tmp_path, free_port(), Behaviour(dead_letter=1.0)).start()
    procs.append(handler)
    sub = {
        "name": "stuck",
        "clusters": ["a"],
        "topics": [topic],
        "group_id": f"stuck-{topic}",
        "endpoint": handler.endpoint,
        "dead_letter_topic": f"{topic}.dlq",
        "create_topics": False,
        "park_timeout_ms": 2000,
        "commit_interval_ms": 200,
        "consumer_properties": dict(FAST_GROUP),
    }
    fw = _member(procs, fjord_bin, tmp_path, broker.bootstrap, sub, "forwarder").start()
    rec = Recorder()
    produce(broker.bootstrap, topic, [(b"k", b"doomed")], rec)
    assert fw.proc is not None
    rc = fw.proc.wait(60)
    logs = fw.logs()
    assert rc == 1, logs
    assert f"could not be written to the dead-letter topic {topic}.dlq" in logs, logs
    assert f"{topic}/0@0" in logs, logs
    assert committed(broker.bootstrap, sub["group_id"], topic, [0]).get(0, 0) == 0
