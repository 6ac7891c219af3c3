"""Idempotent confluent-kafka producer, once per compression codec: keys,
headers (repeated key, null value), explicit timestamps, null and empty
values; consumed back with ``assign()`` and checked field by field.  Then
ListOffsets by timestamp (``offsets_for_times``) and watermarks.
"""

from __future__ import annotations

import random
import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer, TopicPartition

from kafka_helpers import (
    DeliveryTracker,
    assert_dense,
    consume_partitions,
    create_topic,
    flush_all,
    make_consumer,
    produce_with_backpressure,
)

N_RECORDS = 5_000
N_PARTITIONS = 3
TS_STEP_MS = 1000  # timestamps increase by this much per record


def make_records(base_ts: int, seed: int = 7):
    """``[(key, value, headers, timestamp)]`` in production order.

    Values are partly repetitive (so the codecs actually compress) plus
    some random bytes; a few values are null or empty.  Headers include a
    repeated key and a null-valued header.
    """
    rng = random.Random(seed)
    records = []
    for i in range(N_RECORDS):
        key = f"key-{i}".encode()
        if i % 997 == 5:
            value = None
        elif i % 997 == 6:
            value = b""
        else:
            value = (f"record {i} " * (1 + i % 20)).encode() + rng.randbytes(i % 50)
        headers = [
            ("idx", str(i).encode()),
            ("rep", b"first"),
            ("rep", b"second"),
            ("null-header", None),
            ("empty-header", b""),
        ]
        records.append((key, value, headers, base_ts + i * TS_STEP_MS))
    return records


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_producer_roundtrip(broker, topic, codec):
    create_topic(broker.bootstrap, topic, N_PARTITIONS)
    # All timestamps lie in the past two hours (well inside default retention).
    base_ts = int(time.time() * 1000) - 2 * 3600 * 1000
    records = make_records(base_ts)

    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": codec,
        "linger.ms": 10,
        "message.timeout.ms": 60000,
    })
    dr = DeliveryTracker()
    for i, (key, value, headers, ts) in enumerate(records):
        produce_with_backpressure(producer, topic, key=key, value=value, headers=headers,
                                  timestamp=ts, on_delivery=dr.callback(i))
    flush_all(producer)
    assert not dr.failed, f"{len(dr.failed)} deliveries failed, first: {dr.failed[0]}"
    assert len(dr.ok) == N_RECORDS

    # Per partition, in production order: which records went there, and the
    # offsets the broker assigned (must be 0, 1, 2, ... for an idempotent
    # producer on a fresh topic).
    by_partition: dict[int, list[int]] = {p: [] for p in range(N_PARTITIONS)}
    offsets: dict[int, list[int]] = {p: [] for p in range(N_PARTITIONS)}
    for i, p, off in sorted(dr.ok):
        by_partition[p].append(i)
        offsets[p].append(off)
    for p in range(N_PARTITIONS):
        assert by_partition[p], f"no record went to partition {p}"
        assert_dense(offsets[p], f"partition {p} delivery reports (in production order)")

    got = consume_partitions(broker.bootstrap, topic, range(N_PARTITIONS))
    for p in range(N_PARTITIONS):
        msgs = got[p]
        assert len(msgs) == len(by_partition[p]), f"partition {p}: {len(msgs)} records"
        for off, (m, i) in enumerate(zip(msgs, by_partition[p])):
            key, value, headers, ts = records[i]
            where = f"partition {p} offset {off} (record {i}, codec {codec})"
            assert m.offset() == off, where
            assert m.key() == key, where
            assert m.value() == value, f"{where}: {m.value()!r:.80} != {value!r:.80}"
            assert m.headers() == headers, f"{where}: {m.headers()}"
            assert m.timestamp() == (TIMESTAMP_CREATE_TIME, ts), f"{where}: {m.timestamp()}"

    consumer = make_consumer(broker.bootstrap)
    try:
        for p in range(N_PARTITIONS):
            n = len(by_partition[p])
            ts_of = [records[i][3] for i in by_partition[p]]  # strictly increasing
            mid = n // 2
            queries = [
                (ts_of[0] - 1000, 0),         # before the first record
                (ts_of[0], 0),
                (ts_of[mid] - 1, mid),        # first record with ts >= target
                (ts_of[mid], mid),
                (ts_of[-1], n - 1),
                (ts_of[-1] + 1, -1),          # beyond the last: end (-1)
            ]
            for target, want in queries:
                res = consumer.offsets_for_times([TopicPartition(topic, p, target)], timeout=10)
                assert res[0].error is None, res[0].error
                assert res[0].offset == want, (
                    f"offsets_for_times(partition {p}, ts {target}) = {res[0].offset}, want {want}"
                )
            wm = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assert wm == (0, n), f"partition {p}: watermarks {wm}, want (0, {n})"
    finally:
        consumer.close()
