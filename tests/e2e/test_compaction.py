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


#: The cleaner looks every half second; data counts as closed after a second (segment.ms) and
#: tombstones go two seconds after they were written; GC deletes replaced objects soon after.
FAST_CLEANER = (
    "--log-cleaner-backoff-ms", "500",
    "--gc-interval-secs", "1",
    "--log-segment-delete-delay-ms", "500",
)


def read_from_beginning(bootstrap: str, topic: str, partitions, timeout: float = 30.0) -> dict[int, list]:
    """Every partition from its beginning to its end (partition EOF): ``{partition: [(offset,
    key, value)]}``. EOF, not the high watermark, ends a partition: its last offsets may have
    been compacted away."""
    partitions = list(partitions)
    c = make_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: dict[int, list] = {p: [] for p in partitions}
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    at_end.add(m.partition())
                    continue
                got[m.partition()].append((m.offset(), m.key(), m.value()))
        return got
    finally:
        c.close()


def test_compaction_keeps_the_latest_value_of_every_live_key(broker_factory, topic):
    from conftest import free_port
    from test_metrics import scrape

    port = free_port()
    broker = broker_factory(*FAST_CLEANER, "--metrics-listen", f"127.0.0.1:{port}")
    written = compact_and_check(broker, topic)
    m = scrape(port)
    assert m["fjord_cleaner_cleanings_total"] >= 2, m
    assert m["fjord_cleaner_records_removed_total"] >= written - 300, m
    assert m["fjord_cleaner_errors_total"] == 0, m


def test_compaction_on_postgres(broker_factory, topic, postgres_db, tmp_path):
    broker = broker_factory(
        "--coordinator", postgres_db, "--object-store", f"file://{tmp_path / 'objects'}",
        *FAST_CLEANER,
    )
    compact_and_check(broker, topic)


def compact_and_check(broker, topic) -> int:
    """The scenario of the issue: 50,000 updates over 300 keys, 30 of them then deleted; returns
    how many records were written."""
    partitions = 2
    create(
        broker.bootstrap,
        topic,
        partitions,
        **{
            "cleanup.policy": "compact",
            "segment.ms": "1000",
            "delete.retention.ms": "2000",
        },
    )
    keys = 300
    updates = 50_000
    # Idempotent and compressed, as most producers are: the rewritten batches must keep both
    # acceptable to clients.
    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "linger.ms": 5,
        "enable.idempotence": True,
        "compression.type": "lz4",
    })
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    latest: dict[bytes, bytes | None] = {}
    for i in range(updates):
        key = b"key-%03d" % ((i * 7919) % keys)
        value = b"value-%d-%s" % (i, key)
        latest[key] = value
        p.produce(topic, key=key, value=value, on_delivery=report)
        if i % 10_000 == 0:
            p.poll(0)
    # Delete every tenth key with a tombstone.
    deleted = {b"key-%03d" % k for k in range(0, keys, 10)}
    for key in sorted(deleted):
        latest[key] = None
        p.produce(topic, key=key, value=None, on_delivery=report)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    written = updates + len(deleted)
    marks_before = watermarks(broker.bootstrap, topic, range(partitions))
    assert sum(high for _, high in marks_before.values()) == written
    live = {k: v for k, v in latest.items() if v is not None}
    started = time.monotonic()

    # Compacted once the data is closed (segment.ms), and the tombstones gone once
    # delete.retention.ms has passed: exactly one record per live key remains.
    def compacted():
        got = read_from_beginning(broker.bootstrap, topic, range(partitions))
        total = sum(len(v) for v in got.values())
        return got if total == len(live) else None

    deadline = time.monotonic() + 40
    got = compacted()
    while got is None:
        assert time.monotonic() < deadline, "not compacted within 40 s"
        time.sleep(0.5)
        got = compacted()
    print(f"compacted in {time.monotonic() - started:.1f}s: {written} records written, "
          f"{sum(len(v) for v in got.values())} remain")

    seen: dict[bytes, bytes] = {}
    for part, records in got.items():
        offsets = [o for o, _, _ in records]
        assert offsets == sorted(set(offsets)), f"partition {part}: offsets not increasing"
        for _, key, value in records:
            assert key not in seen, f"{key} twice"
            assert value is not None, f"tombstone of {key} still there"
            seen[key] = value
    assert seen == live
    assert not (set(seen) & deleted)
    # Offsets are never renumbered: the high watermarks did not move.
    assert watermarks(broker.bootstrap, topic, range(partitions)) == marks_before

    # The idempotent producer carries on after its batches were rewritten or dropped.
    p.produce(topic, key=b"key-001", value=b"after", on_delivery=report)
    assert p.flush(30) == 0
    assert not errors, errors
    after = read_from_beginning(broker.bootstrap, topic, range(partitions))
    values = {k: v for records in after.values() for _, k, v in records}
    assert values[b"key-001"] == b"after"
    return written


def test_compaction_happens_within_a_minute_with_default_settings(broker, topic):
    """No flag and no topic setting but cleanup.policy: data is compacted within a minute of
    being written on an otherwise idle broker (--log-roll-ms 30 s, cleaner every 15 s)."""
    create(broker.bootstrap, topic, 1, **{"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    latest = {}
    for i in range(2_000):
        key = b"k%d" % (i % 20)
        latest[key] = b"v%d" % i
        p.produce(topic, key=key, value=latest[key])
    assert p.flush(30) == 0
    written = time.monotonic()
    while True:
        got = read_from_beginning(broker.bootstrap, topic, [0])[0]
        if len(got) == len(latest):
            break
        assert time.monotonic() - written < 60, f"{len(got)} records after a minute"
        time.sleep(1)
    print(f"compacted {time.monotonic() - written:.1f}s after the last write")
    assert {k: v for _, k, v in got} == latest
