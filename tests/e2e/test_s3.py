"""The broker on S3 (``--object-store s3://bucket/prefix``) through the real S3 client path of
the object_store crate, against an S3-compatible server on loopback (moto's server mode):
records produced by an idempotent producer are read back, also after a SIGKILL and restart,
and the objects really are in the bucket."""

from __future__ import annotations

from confluent_kafka import Producer

from conftest import S3_BUCKET as BUCKET, use_s3
from kafka_helpers import assert_dense, consume_partitions, create_topic


def test_broker_on_s3(broker_factory, topic, s3_endpoint, monkeypatch):
    url, s3 = s3_endpoint
    use_s3(monkeypatch, url)
    broker = broker_factory("--object-store", f"s3://{BUCKET}/cluster-a")
    create_topic(broker.bootstrap, topic, 3)

    acked = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(3000):
        p.produce(topic, key=b"k%d" % (i % 7), value=b"v%d" % i,
                  on_delivery=lambda e, m: acked.append((m.partition(), m.offset(), m.value())) if e is None else None)
        p.poll(0)
    assert p.flush(60) == 0
    assert len(acked) == 3000

    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page.get("Contents", [])]
    assert keys and all(k.startswith("cluster-a/objects/") for k in keys), keys[:5]

    broker.kill()
    broker.restart()
    got = consume_partitions(broker.bootstrap, topic, range(3))
    by_offset = {(m.partition(), m.offset()): m.value() for ms in got.values() for m in ms}
    for part, ms in got.items():
        assert_dense([m.offset() for m in ms], f"partition {part}")
    for part, off, value in acked:
        assert by_offset.get((part, off)) == value
