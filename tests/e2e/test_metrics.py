"""The Prometheus endpoint (``--metrics-listen``): object-store requests and bytes, cluster view."""

from __future__ import annotations

import re
import urllib.request

from confluent_kafka import Producer

from conftest import free_port
from kafka_helpers import consume_partitions, create_topic


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    assert text.rstrip().endswith("# EOF"), text[-200:]
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


def test_metrics_count_object_store_traffic(broker_factory, topic):
    port = free_port()
    # The cache is off so that the reads below really GET from the store.
    broker = broker_factory("--metrics-listen", f"127.0.0.1:{port}", "--read-cache-bytes", "0")
    before = scrape(port)
    assert before['fjord_object_store_requests_total{op="put"}'] == 0
    assert before["fjord_cluster_live_brokers"] == 1
    assert before["fjord_cluster_background_duties"] == 1

    create_topic(broker.bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for i in range(1000):
        p.produce(topic, value=b"x" * 1000, key=b"%d" % i)
    assert p.flush(30) == 0
    consume_partitions(broker.bootstrap, topic, range(2))

    after = scrape(port)
    puts = after['fjord_object_store_requests_total{op="put"}']
    put_bytes = after['fjord_object_store_bytes_total{op="put"}']
    assert 1 <= puts <= 1000
    assert put_bytes >= 1000 * 1000
    assert after['fjord_object_store_requests_total{op="get"}'] >= 1
    assert after['fjord_object_store_bytes_total{op="get"}'] >= 1000 * 1000
    # The write path's stage histograms: every flush was one PUT, measured in each stage but
    # the commit, where one coordinator call can commit several flushes (group commit).
    flushes = after["fjord_write_flush_seconds_count"]
    assert flushes == puts, (flushes, puts)
    for stage in ("buffered", "upload", "commit_queue"):
        assert after[f"fjord_write_{stage}_seconds_count"] == flushes, stage
        assert after[f"fjord_write_{stage}_seconds_sum"] >= 0
    commits = after["fjord_write_commit_seconds_count"]
    assert 1 <= commits <= flushes, (commits, flushes)
    assert after["fjord_write_flushes_per_commit_count"] == commits
    assert after["fjord_write_flushes_per_commit_sum"] == flushes
    assert after["fjord_write_flush_size_bytes_sum"] >= put_bytes * 0.99
    assert after["fjord_write_failed_flushes_total"] == 0
    # Hedged requests are counted (the local store answers long before a hedge would start).
    assert after["fjord_write_hedged_uploads_total"] >= 0
    assert after["fjord_read_hedged_gets_total"] >= 0
