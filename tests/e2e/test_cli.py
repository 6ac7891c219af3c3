"""The admin commands of the `fjord` binary (`fjord topic ...`, `fjord group ...`), which speak
the Kafka protocol to a running broker, checked against what real clients see."""

from __future__ import annotations

import subprocess

from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_helpers import admin_client


def fjord(fjord_bin, broker, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(fjord_bin), *args, "--bootstrap", broker.bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert res.returncode == 0, f"fjord {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def test_topic_commands(fjord_bin, broker, topic):
    fjord(fjord_bin, broker, "topic", "create", topic, "--partitions", "3", "--config", "retention.ms=1234")
    assert topic in fjord(fjord_bin, broker, "topic", "list").stdout.split()
    md = admin_client(broker.bootstrap).list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3

    fjord(fjord_bin, broker, "topic", "alter", topic, "--partitions", "5", "--config", "cleanup.policy=compact")
    out = fjord(fjord_bin, broker, "topic", "describe", topic).stdout
    assert "partitions: 5" in out
    # Compaction is in force; retention is stored but not in force without `delete`.
    assert "retention.ms = 1234 (set; not in force: cleanup.policy has no `delete`" in out, out
    assert "cleanup.policy = compact (set)\n" in out, out
    fjord(fjord_bin, broker, "topic", "alter", topic, "--config", "cleanup.policy=delete")
    out = fjord(fjord_bin, broker, "topic", "describe", topic).stdout
    assert "retention.ms = 1234 (set)\n" in out, out
    assert "cleanup.policy = delete (set)\n" in out, out

    bad = fjord(fjord_bin, broker, "topic", "create", topic, ok=False)
    assert bad.returncode != 0 and "TopicAlreadyExists" in bad.stderr
    bad = fjord(fjord_bin, broker, "topic", "alter", topic, "--config", "no.such.config=1", ok=False)
    assert bad.returncode != 0 and "InvalidConfig" in bad.stderr

    fjord(fjord_bin, broker, "topic", "delete", topic)
    assert topic not in fjord(fjord_bin, broker, "topic", "list").stdout.split()


def test_group_commands(fjord_bin, broker, topic):
    fjord(fjord_bin, broker, "topic", "create", topic, "--partitions", "2")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(topic, value=b"%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    group = f"{topic}-cli"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 5)], asynchronous=False)
    c.close()

    assert group in fjord(fjord_bin, broker, "group", "list").stdout
    out = fjord(fjord_bin, broker, "group", "describe", group).stdout
    rows = {tuple(line.split()[:5]) for line in out.splitlines() if line.startswith(topic)}
    assert (topic, "0", "3", "5", "2") in rows, out  # committed 3, end 5, lag 2
    assert (topic, "1", "5", "5", "0") in rows, out

    plan = fjord(fjord_bin, broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest").stdout
    assert "dry run" in plan
    fjord(fjord_bin, broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", "--execute")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    c.close()
    assert [tp.offset for tp in got] == [0, 0]

    fjord(fjord_bin, broker, "group", "delete", group)
    assert group not in fjord(fjord_bin, broker, "group", "list").stdout
    bad = fjord(fjord_bin, broker, "group", "delete", group, ok=False)
    assert bad.returncode != 0 and "GroupIdNotFound" in bad.stderr
