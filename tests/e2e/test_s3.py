"""The broker on S3 (``--object-store s3://bucket/prefix``) through the real S3 client path of
the object_store crate, against an S3-compatible server on loopback (moto's server mode):
records produced by an idempotent producer are read back, also after a SIGKILL and restart,
and the objects really are in the bucket."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from confluent_kafka import Producer

from conftest import _port_accepts, free_port
from kafka_helpers import assert_dense, consume_partitions, create_topic

BUCKET = "fjord-e2e"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(tmp_path):
    """An S3 server on a free loopback port with an empty bucket; yields its URL."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        found = shutil.which("moto_server")
        assert found, "moto_server not found: run scripts/setup-test-env.sh (tests/requirements.txt)"
        server = Path(found)
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not _port_accepts(port):
            assert proc.poll() is None, f"moto_server exited: {(tmp_path / 'moto.log').read_text()}"
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield url, s3
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_on_s3(broker_factory, topic, s3_endpoint, monkeypatch):
    url, s3 = s3_endpoint
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT", url)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
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
