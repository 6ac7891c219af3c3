"""kafka-python (pure-Python client) round trip: 1,000 records with keys
and headers to an auto-created topic, read back with ``assign()`` +
``seek_to_beginning()`` (no consumer group)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from kafka_helpers import assert_dense, first_difference

N_RECORDS = 1_000


def test_kafka_python_roundtrip(broker, topic):
    # The topic is not created beforehand: this exercises auto topic
    # creation through the producer's Metadata request.
    producer = KafkaProducer(
        bootstrap_servers=[broker.bootstrap],
        acks="all",
        linger_ms=5,
        retries=5,
        request_timeout_ms=15000,
        max_block_ms=30000,
    )
    futures = []
    for i in range(N_RECORDS):
        key = f"key-{i}".encode()
        value = f"value-{i}-".encode() + bytes(range(256))[: i % 256]
        headers = [("idx", str(i).encode()), ("rep", b"a"), ("rep", b"b")]
        futures.append((key, value, headers, producer.send(topic, key=key, value=value, headers=headers)))
    producer.flush(timeout=60)
    produced: dict[int, list[tuple[int, bytes, bytes, list]]] = {}
    for key, value, headers, fut in futures:
        md = fut.get(timeout=30)
        produced.setdefault(md.partition, []).append((md.offset, key, value, headers))
    producer.close(timeout=10)

    for p, recs in produced.items():
        assert_dense([r[0] for r in recs], f"partition {p} produce results")

    consumer = KafkaConsumer(
        bootstrap_servers=[broker.bootstrap],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30000,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"no partitions known for {topic}"
        assert set(produced) <= partitions
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        got: dict[int, list] = {p: [] for p in partitions}
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < N_RECORDS:
            assert time.monotonic() < deadline, (
                f"timed out: consumed {sum(len(v) for v in got.values())}/{N_RECORDS}"
            )
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    got[tp.partition].append((r.offset, r.key, r.value, list(r.headers)))
        # Nothing beyond what was produced.
        extra = consumer.poll(timeout_ms=1000)
        assert not any(extra.values()), f"unexpected extra records: {extra}"
    finally:
        consumer.close()

    for p in partitions:
        diff = first_difference(got[p], produced.get(p, []))
        assert diff is None, f"partition {p}: consumed records differ from produced: {diff}"


def test_kafka_python_consumer_group_commits(broker, topic):
    """A kafka-python consumer group (subscribe + commit) reads a topic end to end; a second
    consumer of the same group then starts from the committed offsets and finds nothing new."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap], request_timeout_ms=15000)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], acks="all", linger_ms=5)
    for i in range(N_RECORDS):
        producer.send(topic, key=b"k%d" % (i % 10), value=b"v%d" % i)
    producer.flush(timeout=60)
    producer.close(timeout=10)

    group = f"{topic}-group"

    def consumer():
        return KafkaConsumer(
            topic,
            bootstrap_servers=[broker.bootstrap],
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            request_timeout_ms=30000,
        )

    c = consumer()
    seen: dict[int, list[int]] = {}
    try:
        deadline = time.monotonic() + 60
        while sum(len(v) for v in seen.values()) < N_RECORDS:
            assert time.monotonic() < deadline, f"consumed {sum(len(v) for v in seen.values())}/{N_RECORDS}"
            for tp, records in c.poll(timeout_ms=500).items():
                seen.setdefault(tp.partition, []).extend(r.offset for r in records)
            c.commit()
        for p, offsets in seen.items():
            assert_dense(offsets, f"partition {p}")
            assert c.committed(TopicPartition(topic, p)) == len(offsets)
    finally:
        c.close()

    c2 = consumer()
    try:
        extra = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for records in c2.poll(timeout_ms=500).values():
                extra.extend(records)
        assert not extra, f"the group re-read {len(extra)} committed records"
        assert c2.assignment(), "the second consumer got no partitions"
    finally:
        c2.close()
    admin.close()
