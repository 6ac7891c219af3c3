"""Log compaction (cleanup.policy=compact, compact,delete) end to end with confluent-kafka: a
compacted topic refuses records without a key as Kafka does (INVALID_RECORD per record), and
the cleaner keeps the latest record of every key, drops deleted keys once delete.retention.ms
has passed, and never renumbers offsets."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.admin import NewTopic

from kafka_helpers import admin_client, make_consumer, watermarks


def create(bootstrap: str, topic: str, partitions: int, **configs: str) -> None:
    admin = admin_client(bootstrap)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, config=configs)])
    futures[topic].result(timeout=30)


def test_keyless_records_are_refused_by_a_compacted_topic(broker, topic):
    create(broker.bootstrap, topic, 2, **{"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "retries": 0})
    results: list[tuple[bytes | None, int, object]] = []

    def report(err, msg):
        results.append((msg.key(), msg.partition(), err))

    # Keyless records to partition 0, keyed ones to partition 1: one request may carry both,
    # and only partition 0's records fail.
    for i in range(3):
        p.produce(topic, value=b"no key %d" % i, partition=0, on_delivery=report)
        p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=1, on_delivery=report)
    assert p.flush(30) == 0
    keyless = [(k, part, err) for k, part, err in results if k is None]
    keyed = [(k, part, err) for k, part, err in results if k is not None]
    assert len(keyless) == 3 and len(keyed) == 3, results
    for _, _, err in keyless:
        assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
        assert not err.retriable()
    for _, _, err in keyed:
        assert err is None, err
    # Nothing of the refused records was stored.
    marks = watermarks(broker.bootstrap, topic, [0, 1])
    assert marks[0] == (0, 0), marks
    assert marks[1] == (0, 3), marks
