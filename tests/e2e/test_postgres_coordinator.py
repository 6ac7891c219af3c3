"""The broker on the PostgreSQL coordinator (``--coordinator postgres://...``).

Needs ``FJORD_TEST_POSTGRES_URL`` (scripts/test.sh starts a throwaway server
with scripts/test-postgres.sh and exports it).  Two brokers share the
database and one object-store directory: what one broker acknowledged is
served by the other, also after the first is SIGKILLed (brokers are
stateless: killing every broker and starting new ones on other ports serves
all committed data again).
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka import Producer

from kafka_helpers import (
    assert_dense,
    consume_partitions,
    create_topic,
    wait_for_brokers,
    watermarks,
)

PARTITIONS = 3
N = 3000
LEASE_MS = 2000


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("FJORD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "FJORD_TEST_POSTGRES_URL is not set: run the suite with ./scripts/test.sh, which "
            "starts a throwaway PostgreSQL (scripts/test-postgres.sh)"
        )
    return url


def test_two_brokers_share_postgres_and_objects(broker_factory, topic, postgres_url, tmp_path):
    shared = ["--coordinator", postgres_url, "--object-store", f"file://{tmp_path / 'objects'}",
              "--broker-lease-ms", str(LEASE_MS)]
    a = broker_factory(*shared, "--node-id", "1")
    b = broker_factory(*shared, "--node-id", "2")
    # Each lists both (the leases are in the shared database).
    wait_for_brokers(a.bootstrap, {1, 2})
    wait_for_brokers(b.bootstrap, {1, 2})
    create_topic(a.bootstrap, topic, PARTITIONS)

    acked: list[tuple[int, int, bytes]] = []
    failed = []

    def on_delivery(err, msg):
        if err is None:
            acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            failed.append(err)

    p = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i in range(N):
        p.produce(topic, value=b"v%d" % i, key=b"k%d" % (i % 50), on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(60) == 0
    assert not failed, failed[:5]
    assert len(acked) == N

    a.kill()
    # a's lease lapses: b stops listing it within the lease plus one renewal interval.
    gone = wait_for_brokers(b.bootstrap, {2})
    assert gone < (LEASE_MS * 1.2 + 1500) / 1000, f"dead broker listed for {gone:.1f}s"
    got = consume_partitions(b.bootstrap, topic, range(PARTITIONS))
    by_offset = {(m.partition(), m.offset()): m.value() for ms in got.values() for m in ms}
    for part, ms in got.items():
        assert_dense([m.offset() for m in ms], f"partition {part}")
    for part, off, value in acked:
        assert by_offset.get((part, off)) == value, f"acknowledged record {part}/{off} not served by b"
    assert sum(len(ms) for ms in got.values()) == N
    wm = watermarks(b.bootstrap, topic, range(PARTITIONS))
    assert sum(high for _, high in wm.values()) == N


def test_broker_on_postgres_over_tls(broker_factory, topic, postgres_db):
    """``sslmode=require`` + ``--postgres-ca-file``: the broker's sessions are encrypted and the
    server verified; without the CA the broker refuses to start."""
    from conftest import psql

    ca = os.environ.get("FJORD_TEST_POSTGRES_CA")
    assert ca, "FJORD_TEST_POSTGRES_CA is exported by scripts/test-postgres.sh start"
    url = f"{postgres_db}?sslmode=require"
    b = broker_factory("--coordinator", url, "--postgres-ca-file", ca)
    create_topic(b.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True})
    for i in range(100):
        p.produce(topic, value=b"%d" % i)
    assert p.flush(30) == 0
    got = consume_partitions(b.bootstrap, topic, [0])
    assert [m.value() for m in got[0]] == [b"%d" % i for i in range(100)]
    db = postgres_db.rsplit("/", 1)[1]
    counts = psql(postgres_db, "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s "
                  f"JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}' "
                  "AND a.application_name LIKE 'fjord%'")
    encrypted, total = map(int, counts.strip().split("|"))
    assert total >= 2 and encrypted == total, counts

    import subprocess
    from conftest import DEFAULT_FJORD_BIN
    out = subprocess.run([os.environ.get("FJORD_BIN", str(DEFAULT_FJORD_BIN)), "serve",
                          "--coordinator", url, "--listen", "127.0.0.1:0",
                          "--data-dir", str(b.data_dir.parent / "untrusted")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "certificate" in out.stderr.lower(), out.stderr[-2000:]
